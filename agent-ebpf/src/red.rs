//! Per-request RED records for plaintext HTTP/1.x from the socket probes,
//! for instances whose nginx does not carry the request uprobe (RED_SLOTS,
//! set per instance slot by user space: never both for one instance, so a
//! request never has two records). The records are the uprobe's
//! `RequestRecord`, in the same REQUESTS ring buffer, flagged
//! REQ_FLAG_SOCKET.
//!
//! What is measured, and where (all in the connection's CONN_STORE entry):
//! - start: the read that starts a request (ngx_recv already finds it):
//!   bpf_ktime_get_ns, the reader's tgid, and the request line from nginx's
//!   read buffer: the method from its first bytes, the version from the
//!   bytes before the line's first '\n', which is searched for 8 bytes at a
//!   time in at most LINE_CHUNKS × 64 bytes of what the read returned. A line
//!   whose end is not there (a longer target, a line split across reads) gets
//!   VERSION_UNKNOWN and REQ_FLAG_NO_VERSION: user space labels it `_OTHER`
//!   and counts it; it is not guessed.
//! - bytes received: every read from the start to the next request's start,
//!   as nginx's `$request_length` (request line, headers, body; a body nginx
//!   discards after answering is read into a stack buffer and counted too).
//! - status and header size: the response's first final write. nginx writes
//!   the header as a buffer of its own: with writev it is the first iovec
//!   (whose length is the header size), with write/send the whole write.
//! - bytes sent: every send of the request (`$bytes_sent`); the body is that
//!   minus the header (`$body_bytes_sent`).
//! - end: the send after which the response is complete (the connection
//!   goes back to waiting).
//!
//! The record is only known to be complete when the connection's next
//! request starts, a pipelined status line appears, or the connection
//! closes: it is sent then. So the last request of an idle keep-alive
//! connection shows up when that connection is used again or closes.
//!
//! Cost per request with RED on: two clock reads, one 128-byte user read at
//! the start, one or two small user reads at the response's first write,
//! one ring buffer record written in place (without waking the consumer: see request_uprobe's
//! wakeup_flags).
//! Connections of instances with RED off pay one array lookup per request
//! start.
use core::ffi::c_void;

use agent_common::{
    Conn, LINE_BYTES, LINE_WORDS, MAX_INSTANCES, METHOD_UNKNOWN, REQ_FLAG_NO_LINE, REQ_FLAG_NO_VERSION,
    REQ_FLAG_SOCKET, RequestRecord, STATUS_HEAD, SlotStats, VERSION_UNKNOWN, line_of_words, status_of_head,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{self, bpf_ktime_get_ns},
    },
    macros::map,
    maps::Array,
};

use crate::{
    payload::{SYS_READ, SYS_RECVFROM, SYS_SENDTO, SYS_WRITE, SYS_WRITEV, SyscallArgs},
    request_uprobe::{REQUESTS, wakeup_flags},
};

/// Slot → non-zero if the socket probes make per-request records for it.
#[map]
static RED_SLOTS: Array<u32> = Array::with_max_entries(MAX_INSTANCES + 1, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Bytes received while a record is pending count for it.
#[inline(always)]
pub fn received(conn: *mut Conn, ret: i32) {
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    unsafe {
        if (*conn).req_start_ns != 0 {
            (*conn).red_received = (*conn).red_received.wrapping_add(ret as u64);
        }
    }
}

/// A request starts with this read: sends the previous request's record
/// and, if the slot has RED on, starts this one's.
#[inline(always)]
pub fn start(conn: *mut Conn, st: *mut SlotStats, a: &SyscallArgs, ret: i32) {
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    unsafe {
        if (*conn).req_start_ns != 0 {
            emit(conn, st);
        }
        if !on((*conn).slot) {
            return;
        }
        let (method, version) = request_line(a, ret as u32);
        begin(conn, method, version);
        (*conn).red_received = ret as u64;
        if version == VERSION_UNKNOWN {
            (*conn).red_flags |= REQ_FLAG_NO_VERSION as u16;
        }
    }
}

/// nginx made a request from bytes read with the previous one (its status
/// line follows a complete response with no read in between).
#[inline(always)]
pub fn pipelined(conn: *mut Conn, st: *mut SlotStats) {
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    unsafe {
        if (*conn).req_start_ns != 0 {
            emit(conn, st);
        }
        if !on((*conn).slot) {
            return;
        }
        begin(conn, METHOD_UNKNOWN, VERSION_UNKNOWN);
        (*conn).red_flags |= (REQ_FLAG_NO_LINE | REQ_FLAG_NO_VERSION) as u16;
    }
}

#[inline(always)]
fn on(slot: u32) -> bool {
    RED_SLOTS.get(slot).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn begin(conn: *mut Conn, method: u32, version: u32) {
    // SAFETY: as above.
    unsafe {
        (*conn).req_start_ns = now();
        (*conn).red_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*conn).red_flags = REQ_FLAG_SOCKET as u16;
        (*conn).red_method = method;
        (*conn).red_version = version;
        (*conn).red_status = 0;
        (*conn).red_header = 0;
        (*conn).red_end_ns = 0;
        (*conn).red_received = 0;
        (*conn).red_sent = 0;
    }
}

/// The response's first final write: its status line and header size. Also
/// called for writes that failed (the peer reset the connection): nginx logs
/// the status it tried to send.
#[inline(always)]
pub fn response(conn: *mut Conn, a: &SyscallArgs) {
    // SAFETY: as above; user memory is read with bpf_probe_read_user only.
    unsafe {
        if (*conn).req_start_ns == 0 || (*conn).red_status != 0 {
            return;
        }
        let (ptr, len) = if a.nr == SYS_WRITE || a.nr == SYS_SENDTO {
            (a.arg2, a.arg3)
        } else if a.nr == SYS_WRITEV {
            // struct iovec { void *iov_base; size_t iov_len; }
            match bpf_probe_read_user(a.arg2 as *const [u64; 2]) {
                Ok(iov) => (iov[0], iov[1]),
                Err(_) => return,
            }
        } else {
            return;
        };
        let Ok(head) = bpf_probe_read_user(ptr as *const [u8; STATUS_HEAD]) else {
            return;
        };
        let status = status_of_head(&head);
        if status >= 200 {
            (*conn).red_status = status;
            (*conn).red_header = len;
        }
    }
}

/// A send of `ret` bytes (> 0) for the pending request.
#[inline(always)]
pub fn sent(conn: *mut Conn, ret: i32) {
    // SAFETY: as above.
    unsafe {
        if (*conn).req_start_ns != 0 {
            (*conn).red_sent = (*conn).red_sent.wrapping_add(ret as u64);
        }
    }
}

/// The response is complete (for now: a later send moves the end).
#[inline(always)]
pub fn completed(conn: *mut Conn) {
    // SAFETY: as above.
    unsafe {
        if (*conn).req_start_ns != 0 {
            (*conn).red_end_ns = now();
        }
    }
}

/// The connection closes: the pending record, if any, is complete, unless
/// no status line was seen yet. Then the peer closed (a reset) before nginx
/// wrote: nginx still writes (it fails) and logs the status it tried to
/// send, so the record waits for that write ([`response`] reads the status
/// of failed writes too) and goes out when the socket is freed
/// ([`destroyed`]).
#[inline(always)]
pub fn closing(conn: *mut Conn, st: *mut SlotStats) {
    // SAFETY: as above.
    unsafe {
        if (*conn).req_start_ns != 0 && (*conn).red_status != 0 {
            emit(conn, st);
        }
    }
}

/// The socket is freed (nginx closed it): a record still pending goes out.
#[inline(always)]
pub fn destroyed(conn: *mut Conn, st: *mut SlotStats) {
    // SAFETY: as above.
    unsafe {
        if (*conn).req_start_ns != 0 {
            emit(conn, st);
        }
    }
}

/// Writes the pending record to the ring buffer and clears it. Dropped if
/// the slot's RED was turned off meanwhile (the uprobe now reports it).
#[inline(always)]
fn emit(conn: *mut Conn, st: *mut SlotStats) {
    // SAFETY: `conn`, `st` come from lookups in this invocation.
    unsafe {
        let start = (*conn).req_start_ns;
        (*conn).req_start_ns = 0;
        if !on((*conn).slot) {
            return;
        }
        let end = if (*conn).red_end_ns != 0 {
            (*conn).red_end_ns
        } else {
            now()
        };
        let header = (*conn).red_header;
        let sent = (*conn).red_sent;
        let tgid = (*conn).red_tgid;
        // The parent is only the worker's own when the worker runs this
        // (not a softirq's close on some other task's time).
        let ppid = if (bpf_get_current_pid_tgid() >> 32) as u32 == tgid {
            crate::tcp_health::current_parent_tgid()
        } else {
            0
        };
        // Written in place in the ring (no record built on the stack and
        // copied). server_name_len 0: the bytes after it are not read.
        // Waking the consumer costs more than the rest of a request's work:
        // see wakeup_flags.
        let flags = wakeup_flags();
        let Some(mut entry) = REQUESTS.reserve::<RequestRecord>(0) else {
            crate::add_u(&raw mut (*st).red_ring_full, 1);
            return;
        };
        let rec = entry.as_mut_ptr();
        (*rec).tgid = tgid;
        (*rec).ppid = ppid;
        (*rec).status = u32::from((*conn).red_status);
        (*rec).method = (*conn).red_method;
        (*rec).http_version = (*conn).red_version;
        (*rec).flags = u32::from((*conn).red_flags);
        (*rec).port = (*conn).port;
        (*rec)._pad = 0;
        (*rec).duration_us = end.saturating_sub(start).saturating_add(500) / 1000;
        (*rec).request_length = (*conn).red_received;
        (*rec).bytes_sent = sent;
        (*rec).body_bytes_sent = sent.saturating_sub(header);
        (*rec).server_name_len = 0;
        entry.submit(flags);
        // Process-context counters and softirq (close) may both write here:
        // the adds are atomic like the gauges'.
        crate::add_u(&raw mut (*st).red_records, 1);
    }
}

/// The method and version of the request line nginx just read (a read or
/// recvfrom of `ret` bytes into the buffer in the syscall's second argument):
/// one read of LINE_BYTES from nginx's buffer, decoded in registers.
#[inline(always)]
fn request_line(a: &SyscallArgs, ret: u32) -> (u32, u32) {
    if a.nr != SYS_READ && a.nr != SYS_RECVFROM {
        return (METHOD_UNKNOWN, VERSION_UNKNOWN);
    }
    let mut words = [0u64; LINE_WORDS];
    // SAFETY: reads LINE_BYTES of user memory into `words` (zeroed on
    // failure). nginx's buffer may be shorter than that: what lies past it
    // is never taken for the line (line_of_words stops at `ret`).
    let rc = unsafe {
        generated::bpf_probe_read_user(
            words.as_mut_ptr() as *mut c_void,
            LINE_BYTES as u32,
            a.arg2 as *const c_void,
        )
    };
    if rc != 0 {
        return (METHOD_UNKNOWN, VERSION_UNKNOWN);
    }
    line_of_words(&words, ret)
}
