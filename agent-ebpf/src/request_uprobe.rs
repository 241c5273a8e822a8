//! Per-request records from an entry uprobe on nginx's
//! `ngx_http_free_request(ngx_http_request_t *r, ngx_int_t rc)`.
//!
//! nginx calls it once per request (HTTP/1.x, TLS, HTTP/2 streams) when the
//! status is final, right before it writes the access log line. The program
//! reads what `$status $request_method $server_protocol $request_time
//! $request_length $bytes_sent $scheme $server_port` would show and emits one
//! fixed-size record into the REQUESTS ring buffer; user space aggregates.
//!
//! Offsets come from REQ_OFFSETS, indexed by the attach cookie (one entry per
//! nginx executable, chosen in user space for that build). A request whose
//! first field is not nginx's "HTTP" signature is counted and dropped: the
//! offsets do not fit and user space detaches.
use core::ffi::c_void;

use agent_common::{
    CONN_SPAN_MAX, MAX_NGINX_BINARIES, NGX_HTTP_REQUEST_SIGNATURE, NginxOffsets, REQ_FLAG_HTTP2, REQ_FLAG_SSL,
    REQ_SPAN_MAX, RequestProbeStats, RequestRecord,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{self, bpf_get_attach_cookie},
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::ProbeContext,
};

/// 2 MiB: ~17,000 records (112 bytes and an 8-byte header each) between
/// two drains by user space. The kernel maps a ring twice (for wrap-around),
/// so its size counts double in the agent's resident memory.
#[map]
pub(crate) static REQUESTS: RingBuf = RingBuf::with_byte_size(2 << 20, 0);

#[map]
static REQ_OFFSETS: Array<NginxOffsets> = Array::with_max_entries(MAX_NGINX_BINARIES, 0);

#[map]
static REQ_STATS: PerCpuArray<RequestProbeStats> = PerCpuArray::with_max_entries(MAX_NGINX_BINARIES, 0);

/// Copies of the request and connection structs, read in one go each
/// (NginxOffsets::req_span, conn_span): one user-memory read per struct
/// instead of one per field. Per CPU: uprobes do not nest on a CPU. In
/// 8-byte words: every field the program takes is 8-byte aligned
/// (NginxOffsets::with_spans checks), so a field is one load, not eight
/// byte loads shifted together.
#[repr(C)]
pub struct Scratch {
    req: [u64; (REQ_SPAN_MAX / 8) as usize],
    conn: [u64; (CONN_SPAN_MAX / 8) as usize],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one is an error.
    unsafe { bpf_probe_read_user((base + u64::from(off)) as *const T) }.ok()
}

#[uprobe]
pub fn ngx_free_request(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the link's cookie.
    let idx = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(st) = REQ_STATS.get_ptr_mut(idx) else {
        return 0;
    };
    // A reference, not a copy: the program takes a few of its fields.
    let Some(off) = REQ_OFFSETS.get(idx) else {
        return 0;
    };
    if off.valid == 0 {
        return 0;
    }
    let r: u64 = ctx.arg(0).unwrap_or(0);
    let rc: i64 = ctx.arg(1).unwrap_or(0);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `st` and `scratch` point into this CPU's map values; uprobes
    // do not nest on a CPU.
    let (st, scratch) = unsafe { (&mut *st, &mut *scratch) };
    match fill(&ctx, off, r, rc, scratch) {
        Outcome::Record(f) => {
            let flags = wakeup_flags();
            // Written in place in the ring, not built on the stack and copied.
            let Some(mut entry) = REQUESTS.reserve::<RequestRecord>(0) else {
                st.ring_full += 1;
                return 0;
            };
            let rec = entry.as_mut_ptr();
            // SAFETY: `rec` points at the reserved, writable record.
            unsafe {
                (*rec).tgid = f.tgid;
                (*rec).status = f.status;
                (*rec).method = f.method;
                (*rec).http_version = f.http_version;
                (*rec).flags = f.flags;
                (*rec).port = f.port;
                (*rec)._pad = 0;
                (*rec).duration_us = f.duration_us;
                (*rec).request_length = f.request_length;
                (*rec).bytes_sent = f.bytes_sent;
                (*rec).body_bytes_sent = f.body_bytes_sent;
                (*rec).ppid = f.ppid;
                // 0 unless read: the name's bytes after it are not looked at.
                (*rec).server_name_len = 0;
                if off.want_server_name != 0 {
                    server_name(&mut *rec, off, f.ip, r);
                }
            }
            entry.submit(flags);
            st.records += 1;
        }
        Outcome::Mismatch => st.signature_mismatch += 1,
        Outcome::NotLogged => st.not_logged += 1,
        Outcome::ReadError => st.read_errors += 1,
    }
    0
}

/// Ring-buffer bytes waiting above which a record wakes the consumer.
/// Below it, records are not signalled and the consumer drains them on its
/// poll timeout (agent/src/collect/requests: 200 ms): a wake-up per record
/// is an irq_work self-interrupt, which in a VM costs microseconds per
/// request. 512 KiB is ~4,400 records, a quarter of the ring.
const WAKEUP_BYTES: u64 = 512 << 10;

#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    if REQUESTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// A record's fields but the server name (read straight into the ring).
struct Fields {
    tgid: u32,
    ppid: u32,
    status: u32,
    method: u32,
    http_version: u32,
    flags: u32,
    port: u16,
    duration_us: u64,
    request_length: u64,
    bytes_sent: u64,
    body_bytes_sent: u64,
    /// The probed instruction's address (finds ngx_http_core_module).
    ip: u64,
}

enum Outcome {
    Record(Fields),
    Mismatch,
    NotLogged,
    ReadError,
}

/// `len` bytes (1..8·W) of user memory at `at` into `buf` (W a power of two).
#[inline(always)]
fn read_span<const W: usize>(buf: &mut [u64; W], at: u64, len: u32) -> bool {
    const { assert!(W.is_power_of_two()) };
    let n = W * 8;
    // Bounded by a mask, not a comparison: LLVM rewrites a range check
    // (len - 1 < N - 1) so that it bounds another register than the one
    // passed to the helper, and drops a mask that follows it. User space
    // keeps spans below N (NginxOffsets::with_spans), so the mask changes
    // nothing for a real table.
    let len = len & (n as u32 - 1);
    if len == 0 {
        return false;
    }
    // SAFETY: the helper writes at most `len` < 8·W bytes into `buf` and
    // checks the user address.
    unsafe { generated::bpf_probe_read_user(buf.as_mut_ptr() as *mut c_void, len, at as *const c_void) == 0 }
}

/// The word holding byte `off` of a struct copy (W a power of two): for
/// an 8-byte field, the field (user space refuses a table whose 8-byte
/// fields are not 8-byte aligned or not inside the span:
/// NginxOffsets::with_spans). Bounded by a mask, not a comparison, for the
/// verifier (see read_span); no test per field either: per-field branches
/// made LLVM spill values on some paths only, which this kernel's verifier
/// rejects ("verifier bug: stack slot ..." in precision tracking).
#[inline(always)]
fn u64_at<const W: usize>(buf: &[u64; W], off: u32) -> u64 {
    const { assert!(W.is_power_of_two()) };
    buf[(off >> 3) as usize & (W - 1)]
}

/// The byte at `off` of a struct copy (little-endian words).
#[inline(always)]
fn u8_at<const W: usize>(buf: &[u64; W], off: u32) -> u8 {
    (u64_at(buf, off) >> ((off & 7) * 8)) as u8
}

#[inline(always)]
fn fill(ctx: &ProbeContext, off: &NginxOffsets, r: u64, rc: i64, scratch: &mut Scratch) -> Outcome {
    // The request struct up to its furthest field used, in one read.
    if !read_span(&mut scratch.req, r, off.req_span) {
        return Outcome::ReadError;
    }
    let req = &scratch.req;
    // The first four bytes (little-endian).
    if req[0] as u32 != NGX_HTTP_REQUEST_SIGNATURE {
        return Outcome::Mismatch;
    }
    let logged = u8_at(req, off.req_logged_byte);
    let pool = u64_at(req, off.req_pool);
    // Already logged (nginx skips its log line), a fake request, or freed twice.
    if u32::from(logged) & off.req_logged_mask != 0 || pool == 0 {
        return Outcome::NotLogged;
    }
    // The worker is being killed (SIGKILL pending): it dies on its way back
    // from this trap, before nginx writes the log line. Like a request in
    // flight on a killed worker, it is not counted (stub_status has it).
    let task = crate::tcp_health::CurrentTask::get();
    if task.as_ref().is_some_and(|t| t.is_dying()) {
        return Outcome::NotLogged;
    }
    let c = u64_at(req, off.req_connection);
    if !read_span(&mut scratch.conn, c, off.conn_span) {
        return Outcome::ReadError;
    }
    let req = &scratch.req;
    let conn = &scratch.conn;
    let mut status = u64_at(req, off.req_status);
    let err_status = u64_at(req, off.req_err_status);
    let sent = u64_at(conn, off.conn_sent) as i64;
    // What ngx_http_free_request does next, before logging.
    if rc > 0 && (status == 0 || sent == 0) {
        status = rc as u64;
    }
    if err_status != 0 {
        status = err_status;
    }
    let method = u64_at(req, off.req_method);
    let version = u64_at(req, off.req_http_version);
    let req_len = u64_at(req, off.req_request_length) as i64;
    let start_sec = u64_at(req, off.req_start_sec) as i64;
    let start_msec = u64_at(req, off.req_start_msec);
    let stream = u64_at(req, off.req_stream);
    let ssl = u64_at(conn, off.conn_ssl);
    let header_size = u64_at(req, off.req_header_size);
    let sa = u64_at(conn, off.conn_local_sockaddr);
    // ngx_cached_time, found from the probed instruction's address.
    // SAFETY: the context is the uprobe's pt_regs.
    let ip = unsafe { (*ctx.regs).rip };
    let cached_ptr = (ip as i64).wrapping_add(off.cached_time_from_fn) as u64;
    let Some(tp) = read::<u64>(cached_ptr, 0) else {
        return Outcome::ReadError;
    };
    let Some((now_sec, now_msec)) = cached_time(tp, off) else {
        return Outcome::ReadError;
    };
    // As ngx_http_log_request_time computes $request_time.
    let ms = (now_sec - start_sec) * 1000 + (now_msec as i64 - start_msec as i64);
    let mut port = 0u16;
    // sa_family and sin_port / sin6_port: the first four bytes, one read.
    if sa != 0
        && let Some(head) = read::<[u8; 4]>(sa, 0)
    {
        let family = u16::from_le_bytes([head[0], head[1]]);
        if family == AF_INET || family == AF_INET6 {
            port = u16::from_be_bytes([head[2], head[3]]);
        }
    }
    let mut flags = 0;
    if ssl != 0 {
        flags |= REQ_FLAG_SSL;
    }
    if stream != 0 {
        flags |= REQ_FLAG_HTTP2;
    }
    Outcome::Record(Fields {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        ppid: task.map_or(0, |t| t.parent_tgid()),
        status: status as u32,
        method: method as u32,
        http_version: version as u32,
        flags,
        port,
        duration_us: ms.clamp(0, i64::MAX / 1000) as u64 * 1000,
        request_length: req_len.max(0) as u64,
        bytes_sent: sent.max(0) as u64,
        // As ngx_http_variable_body_bytes_sent computes it.
        body_bytes_sent: (sent - header_size as i64).max(0) as u64,
        ip,
    })
}

/// `sec` and `msec` of the ngx_time_t at `tp`: one read of both when they
/// are adjacent (nginx's layout: `sec` then `msec`), else one each.
#[inline(always)]
fn cached_time(tp: u64, off: &NginxOffsets) -> Option<(i64, u64)> {
    if off.time_msec == off.time_sec + 8 {
        let pair = read::<[u64; 2]>(tp, off.time_sec)?;
        return Some((pair[0] as i64, pair[1]));
    }
    Some((read::<i64>(tp, off.time_sec)?, read::<u64>(tp, off.time_msec)?))
}

/// The answering server block's first `server_name`:
/// r->srv_conf[ngx_http_core_module.ctx_index]->server_name. Left empty
/// (length 0) if anything cannot be read.
#[inline(always)]
fn server_name(rec: &mut RequestRecord, off: &NginxOffsets, ip: u64, r: u64) {
    let module = (ip as i64).wrapping_add(off.core_module_from_fn) as u64;
    let (Some(ctx_index), Some(srv_conf)) = (read::<u64>(module, 0), read::<u64>(r, off.req_srv_conf)) else {
        return;
    };
    if ctx_index >= 256 || srv_conf == 0 {
        return;
    }
    let Some(cscf) = read::<u64>(srv_conf + ctx_index * 8, 0) else {
        return;
    };
    let (Some(len), Some(data)) = (
        read::<u64>(cscf, off.cscf_server_name),
        read::<u64>(cscf, off.cscf_server_name + 8),
    ) else {
        return;
    };
    if len == 0 || data == 0 {
        return;
    }
    // SAFETY: the helper checks the address; a failed read leaves len 0.
    if unsafe { bpf_probe_read_user_buf(data as *const u8, &mut rec.server_name) }.is_ok() {
        rec.server_name_len = len.min(u64::from(u32::MAX)) as u32;
    }
}
