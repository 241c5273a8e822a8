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
//! Cost per request with RED on: two clock reads, one 64-byte user read at
//! the start (two or more only for request lines longer than ~60 bytes),
//! one or two small user reads at the response's first write, one ring
//! buffer output. Connections of instances with RED off pay one array
//! lookup per request start.
use core::ffi::c_void;

use agent_common::{
    Conn, LINE_TAIL, METHOD_BYTES, METHOD_UNKNOWN, MAX_INSTANCES, REQ_FLAG_NO_LINE, REQ_FLAG_NO_VERSION,
    REQ_FLAG_SOCKET, RequestRecord, STATUS_HEAD, SlotStats, VERSION_UNKNOWN, method_bit, status_of_head,
    version_from_line_end,
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
    request_uprobe::REQUESTS,
};

/// Slot → non-zero if the socket probes make per-request records for it.
#[map]
static RED_SLOTS: Array<u32> = Array::with_max_entries(MAX_INSTANCES + 1, 0);

/// Bytes of the read buffer searched for the request line's end.
const CHUNK: usize = 64;
const LINE_CHUNKS: usize = 8;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;

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

/// The response's first final write: its status line and header size.
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

/// The connection closes: the pending record, if any, is complete.
#[inline(always)]
pub fn closing(conn: *mut Conn, st: *mut SlotStats) {
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
        let end = if (*conn).red_end_ns != 0 { (*conn).red_end_ns } else { now() };
        let header = (*conn).red_header;
        let sent = (*conn).red_sent;
        let rec = RequestRecord {
            tgid: (*conn).red_tgid,
            status: u32::from((*conn).red_status),
            method: (*conn).red_method,
            http_version: (*conn).red_version,
            flags: u32::from((*conn).red_flags),
            port: (*conn).port,
            duration_ms: end.saturating_sub(start).saturating_add(500_000) / 1_000_000,
            request_length: (*conn).red_received,
            bytes_sent: sent,
            body_bytes_sent: sent.saturating_sub(header),
            ..RequestRecord::default()
        };
        // Process-context counters and softirq (close) may both write here:
        // the adds are atomic like the gauges'.
        if REQUESTS.output::<RequestRecord>(&rec, 0).is_ok() {
            crate::add_u(&raw mut (*st).red_records, 1);
        } else {
            crate::add_u(&raw mut (*st).red_ring_full, 1);
        }
    }
}

/// The method and version of the request line nginx just read (a read or
/// recvfrom of `ret` bytes into the buffer in the syscall's second argument).
#[inline(always)]
fn request_line(a: &SyscallArgs, ret: u32) -> (u32, u32) {
    if a.nr != SYS_READ && a.nr != SYS_RECVFROM {
        return (METHOD_UNKNOWN, VERSION_UNKNOWN);
    }
    let mut method = METHOD_UNKNOWN;
    let mut c = 0usize;
    while c < LINE_CHUNKS {
        let off = (c * CHUNK) as u32;
        if off >= ret {
            break;
        }
        let n = if ret - off > CHUNK as u32 { CHUNK as u32 } else { ret - off };
        let mut chunk = [0u8; CHUNK];
        // SAFETY: reads at most CHUNK bytes of user memory into `chunk`;
        // bytes past `n` stay zero (never a '\n').
        let rc = unsafe {
            generated::bpf_probe_read_user(
                chunk.as_mut_ptr() as *mut c_void,
                n,
                (a.arg2 + u64::from(off)) as *const c_void,
            )
        };
        if rc != 0 {
            break;
        }
        if c == 0 {
            let mut head = [0u8; METHOD_BYTES];
            head.copy_from_slice(&chunk[..METHOD_BYTES]);
            method = method_bit(&head, n as usize);
        }
        if let Some(i) = first_newline(&chunk) {
            let e = c * CHUNK + i;
            return (method, version_at(a, &chunk, c, i, e));
        }
        c += 1;
    }
    (method, VERSION_UNKNOWN)
}

/// Index of the first '\n' in `chunk`, 8 bytes at a time.
#[inline(always)]
fn first_newline(chunk: &[u8; CHUNK]) -> Option<usize> {
    let mut w = 0;
    while w < CHUNK / 8 {
        let b = w * 8;
        let word = u64::from_le_bytes([
            chunk[b],
            chunk[b + 1],
            chunk[b + 2],
            chunk[b + 3],
            chunk[b + 4],
            chunk[b + 5],
            chunk[b + 6],
            chunk[b + 7],
        ]) ^ NEWLINES;
        // The lowest flagged byte is the first zero byte (borrows only run
        // upwards from a zero byte).
        let hits = word.wrapping_sub(ONES) & !word & HIGHS;
        if hits != 0 {
            let mut k = 0;
            while k < 8 {
                if (hits >> (k * 8)) & 0x80 != 0 {
                    return Some(b + k);
                }
                k += 1;
            }
        }
        w += 1;
    }
    None
}

/// The version from the LINE_TAIL bytes ending at the '\n' at index `i` of
/// chunk `c` (absolute index `e`): from the chunk itself for the first one,
/// else read again from nginx's buffer.
#[inline(always)]
fn version_at(a: &SyscallArgs, chunk: &[u8; CHUNK], c: usize, i: usize, e: usize) -> u32 {
    let avail = if e + 1 < LINE_TAIL { e + 1 } else { LINE_TAIL };
    let mut tail = [0u8; LINE_TAIL];
    if c == 0 {
        let mut k = 0;
        while k < LINE_TAIL {
            // Index into the chunk of tail[k]: i - (LINE_TAIL - 1) + k.
            let j = (i + k) as i64 - (LINE_TAIL as i64 - 1);
            if j >= 0 {
                tail[k] = chunk[(j as usize) & (CHUNK - 1)];
            }
            k += 1;
        }
    } else {
        let from = a.arg2 + (e + 1 - LINE_TAIL) as u64;
        // SAFETY: user memory is read with bpf_probe_read_user only.
        match unsafe { bpf_probe_read_user(from as *const [u8; LINE_TAIL]) } {
            Ok(t) => tail = t,
            Err(_) => return VERSION_UNKNOWN,
        }
    }
    version_from_line_end(&tail, avail)
}
