//! ngxprobe's eBPF side: derives nginx's stub_status counters from socket events.
//!
//! Hooks (all fire only on network events, never on other syscalls):
//! - `inet_sock_set_state`: a handshake completing on a port nginx listens on
//!   (matched by network namespace + port) is an accepted connection; the move
//!   to FIN_WAIT1/LAST_ACK/CLOSE is nginx (or the peer) closing it.
//! - `sock_recv_length`: nginx read request bytes. Data on a connection with no
//!   request in progress starts a request, as ngx_http_alloc_request counts it.
//!   A connection's first read is judged by its first bytes: a TLS record, the
//!   HTTP/2 preface or anything that cannot begin an HTTP/1.x request line sets
//!   it aside for good (counted by reason; no requests, always waiting). So
//!   does any request line on a port whose listeners speak only cleartext
//!   HTTP/2 (LISTEN_H2C_ONLY, from the instance's config and version).
//! - `sock_send_length`: nginx wrote. The first write of a request is its
//!   response; a status line written after a complete response, with no read in
//!   between, is a pipelined request; a write the socket did not take in full
//!   means nginx is still writing.
//! - `tcp_destroy_sock`: the socket is gone.
//!
//! Per-connection state lives in socket-local storage (CONN_STORE): a socket
//! without it costs one pointer test, so other processes' traffic is nearly
//! free. Per-instance counters live in the per-CPU STATS array.
//!
//! Cost discipline: the common keep-alive request is one storage lookup and
//! the syscall's registers per event; no payload is read. Only a connection's
//! first read (16 bytes) and the rare ambiguous writes (a 25-byte send that
//! may be 100 Continue, a status line after a complete response: pipelining)
//! look at nginx's buffer.
#![no_std]
#![no_main]
// Atomic add on map values (the BPF target's core has no AtomicU64::fetch_add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod payload;
mod red;
mod request_uprobe;
mod tcp_health;

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use agent_common::{
    Conn, GLOBAL_SLOT, KernelOffsets, LISTEN_H2C_ONLY, LISTEN_SLOT_MASK, ListenKey, MAX_INSTANCES, MAX_LISTENERS,
    MAX_SEEDS, PHASE_CLOSED, PHASE_READING, PHASE_WAITING, PHASE_WRITING, PROXY_HEADER, SlotStats, UNPARSED_HTTP2,
    UNPARSED_NONE, UNPARSED_TLS,
};
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_storage_get},
    macros::{btf_map, btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use payload::{
    CONTINUE_LEN, Head, SYS_SENDFILE, SYS_SENDTO, SYS_WRITE, SyscallArgs, first_read_kind, reads_into_stack,
    syscall_args, write_head,
};

#[btf_map]
static CONN_STORE: SkStorage<Conn> = SkStorage::new();

/// (netns, port) → instance slot, with LISTEN_H2C_ONLY for h2c-only ports.
#[map]
static LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Connections found open when the agent started (socket cookie → slot, with
/// LISTEN_H2C_ONLY as in LISTENERS), adopted into CONN_STORE at their first event.
#[map]
static SEEDS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SEEDS, 0);

/// [0]: non-zero while SEEDS may hold entries (userspace sets and clears it),
/// so sockets without state only pay the cookie + SEEDS lookup then.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<SlotStats> = PerCpuArray::with_max_entries(MAX_INSTANCES + 1, 0);

/// Filled in by userspace at load time from /sys/kernel/btf/vmlinux.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    sk_wmem_queued: 0,
    sk_sndbuf: 0,
    skc_num: 0,
    skc_net: 0,
    net_ns_inum: 0,
    valid: 0,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const MSG_PEEK: i32 = 2;

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a read of our own global; volatile so the loader's value is used.
    unsafe { ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// The connection state of `sk`, or None for sockets nginx did not accept.
#[inline(always)]
fn conn_of(sk: *const c_void) -> Option<*mut Conn> {
    // SAFETY: `sk` is the tracepoint's `struct sock *` (a BTF pointer).
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&CONN_STORE).cast_mut().cast(),
            sk as *mut c_void,
            ptr::null_mut(),
            0,
        )
    } as *mut Conn;
    if !p.is_null() {
        return Some(p);
    }
    let v = take_seed(sk)?;
    let init = Conn {
        slot: v & LISTEN_SLOT_MASK,
        phase: PHASE_WAITING,
        seeded: 1,
        h2c_only: (v & LISTEN_H2C_ONLY != 0) as u8,
        ..Conn::default()
    };
    create_state(sk, &init)
}

/// Attaches `init` to `sk` as its connection state (None if the kernel could
/// not allocate it).
#[inline(always)]
fn create_state(sk: *const c_void, init: &Conn) -> Option<*mut Conn> {
    // SAFETY: `sk` is the tracepoint's socket; `init` outlives the call.
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&CONN_STORE).cast_mut().cast(),
            sk as *mut c_void,
            ptr::from_ref(init).cast_mut().cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    } as *mut Conn;
    if p.is_null() { None } else { Some(p) }
}

/// If `sk` was found open at agent start, removes and returns its SEEDS value.
#[inline(always)]
fn take_seed(sk: *const c_void) -> Option<u32> {
    let pending = CONTROL.get(0).copied().unwrap_or(0);
    if pending == 0 {
        return None;
    }
    // SAFETY: `sk` is the tracepoint's `struct sock *` (a BTF pointer).
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // SAFETY: plain value read from our own map.
    let slot = unsafe { SEEDS.get(cookie) }.copied()?;
    let _ = SEEDS.remove(cookie);
    Some(slot)
}

#[inline(always)]
fn stats(slot: u32) -> Option<*mut SlotStats> {
    STATS.get_ptr_mut(slot)
}

// Gauges (active/reading/writing) and accept/close counters are also changed
// from softirq (handshakes, resets), which can interrupt a program on the same
// CPU: those updates are atomic. Counters only the syscall-side programs touch
// (requests, responses, blocked writes) use plain per-CPU adds.
#[inline(always)]
fn add_u(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a live per-CPU map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

/// Plain add for per-CPU counters only process-context programs change.
#[inline(always)]
fn inc_local(field: *mut u64) {
    // SAFETY: `field` points into a live per-CPU map value.
    unsafe { *field = (*field).wrapping_add(1) };
}

#[inline(always)]
fn add_i(field: *mut i64, v: i64) {
    // SAFETY: as above.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(field, v) };
}

/// Moves a connection to `phase`, keeping the reading/writing gauges in step.
#[inline(always)]
fn set_phase(conn: *mut Conn, st: *mut SlotStats, phase: u8) {
    // SAFETY: both pointers come from map/storage lookups in this invocation.
    unsafe {
        let old = (*conn).phase;
        if old == phase {
            return;
        }
        if old == PHASE_READING {
            add_i(&raw mut (*st).reading, -1);
        } else if old == PHASE_WRITING {
            add_i(&raw mut (*st).writing, -1);
        }
        if phase == PHASE_READING {
            add_i(&raw mut (*st).reading, 1);
        } else if phase == PHASE_WRITING {
            add_i(&raw mut (*st).writing, 1);
        }
        (*conn).phase = phase;
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn ngx_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new == TCP_CLOSE {
        tcp_health::on_close_state(sk);
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        on_established(sk);
    } else if (old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT)
        && (new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK || new == TCP_CLOSE)
    {
        // Only the way out of the open states: a connection leaves `active`
        // there, once (FIN_WAIT2 → CLOSE, LAST_ACK → CLOSE, ... are the same
        // connection already closed, and tcp_destroy_sock is the backstop).
        // Saves two storage lookups per connection on `Connection: close`.
        on_closing(sk);
    }
    0
}

/// A handshake completed: the connection is accepted if its local port is one
/// an nginx instance listens on in this network namespace.
#[inline(always)]
fn on_established(sk: *const c_void) {
    let off = offsets();
    if off.valid == 0 {
        return;
    }
    // Plain loads through the socket's BTF pointer and its net pointer
    // field (tcp_health::load): this runs for every handshake on the node.
    let port: u16 = tcp_health::load(sk, off.skc_num);
    let net: *const c_void = tcp_health::load(sk, off.skc_net);
    if net.is_null() {
        return;
    }
    let netns: u32 = tcp_health::load(net, off.net_ns_inum);
    let key = ListenKey { netns, port, _pad: 0 };
    // SAFETY: plain value read from our own map.
    let Some(v) = (unsafe { LISTENERS.get(key) }).copied() else {
        return;
    };
    let slot = v & LISTEN_SLOT_MASK;
    let Some(st) = stats(slot) else {
        return;
    };
    // SAFETY: `st` is a live per-CPU value.
    unsafe { add_u(&raw mut (*st).accepted, 1) };
    // The accept time gives the connection's lifetime at close (tcp_health):
    // one clock read per connection, none per request.
    let init = Conn {
        slot,
        phase: PHASE_WAITING,
        port,
        // The listener's flag rides in the state the accept creates anyway:
        // no lookup per read.
        h2c_only: (v & LISTEN_H2C_ONLY != 0) as u8,
        // SAFETY: helper without arguments.
        accepted_ns: unsafe { bpf_ktime_get_ns() },
        ..Conn::default()
    };
    if create_state(sk, &init).is_some() {
        // SAFETY: as above.
        unsafe { add_i(&raw mut (*st).active, 1) };
    } else if let Some(g) = stats(GLOBAL_SLOT) {
        // SAFETY: as above.
        unsafe { add_u(&raw mut (*g).conn_map_full, 1) };
    }
}

/// The socket's local port (host order), 0 if it cannot be read.
#[inline(always)]
fn local_port(sk: *const c_void) -> u16 {
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    tcp_health::load(sk, off.skc_num)
}

/// nginx closed the connection (FIN_WAIT1 / LAST_ACK), or it was reset: it
/// leaves `active` exactly once (the state stays, marked closed, until the
/// socket is freed, so a late read cannot count it again).
#[inline(always)]
fn on_closing(sk: *const c_void) {
    if let Some(conn) = conn_of(sk) {
        close_conn(conn);
    }
}

#[inline(always)]
fn close_conn(conn: *mut Conn) {
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    unsafe {
        if (*conn).phase == PHASE_CLOSED {
            return;
        }
        let Some(st) = stats((*conn).slot) else {
            return;
        };
        red::closing(conn, st);
        set_phase(conn, st, PHASE_WAITING);
        (*conn).phase = PHASE_CLOSED;
        add_i(&raw mut (*st).active, -1);
        add_u(&raw mut (*st).closed, 1);
    }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn ngx_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    if let Some(conn) = conn_of(sk) {
        tcp_health::on_destroy(sk, conn);
        close_conn(conn);
        // SAFETY: `conn` comes from a storage lookup in this invocation.
        if let Some(st) = stats(unsafe { (*conn).slot }) {
            red::destroyed(conn, st);
        }
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn ngx_recv(ctx: BtfTracePointContext) -> u32 {
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return 0;
    }
    let sk: *const c_void = ctx.arg(0);
    let Some(conn) = conn_of(sk) else {
        return 0;
    };
    // SAFETY: `conn` and `st` come from lookups in this invocation.
    unsafe {
        if (*conn).unparsed != UNPARSED_NONE {
            // Not HTTP/1.x: its requests are not ours to count.
            return 0;
        }
        if (*conn).phase != PHASE_WAITING {
            // Reading the rest of a header, or a request body: same request.
            red::received(conn, ret);
            return 0;
        }
        let a = syscall_args();
        let want = a.arg3 as u32;
        if (*conn).first_read_size == 0 {
            // The connection's first bytes: TLS, HTTP/2 and anything that is
            // not a request line are set aside here, before they are taken
            // for a request.
            let mut kind = first_read_kind(&a, ret as u32);
            if (*conn).h2c_only != 0 && (kind == UNPARSED_NONE || kind == PROXY_HEADER) {
                // An h2c-only listener (nginx before 1.25.1, `listen ...
                // http2` without TLS): nginx takes these bytes for the
                // HTTP/2 preface (or the PROXY header before it) and makes
                // no HTTP/1.x request of them, whatever they say.
                kind = UNPARSED_HTTP2;
            }
            if kind == PROXY_HEADER {
                // A load balancer's PROXY protocol header. On a TLS listener
                // nginx reads it alone into a stack buffer: the next read
                // (the ClientHello) decides. On a plain one it reads it with
                // the request into the header buffer: a request starts here.
                if reads_into_stack(&a) {
                    return 0;
                }
            } else if kind != UNPARSED_NONE {
                mark_unparsed(conn, kind);
                return 0;
            }
            (*conn).first_read_size = want;
        } else if (*conn).resp_started != 0 {
            // After a response, data is a new request unless it is the tail
            // of a body nginx discards after answering early (405, 413, ...)
            // or lingering-close input: those go into stack buffers, request
            // lines into the header buffer, whose size the first read showed
            // (a smaller read finishes a pipelined request nginx already made).
            if want != (*conn).first_read_size || reads_into_stack(&a) {
                red::received(conn, ret);
                return 0;
            }
        }
        if tcp_health::current_is_dying() {
            // The worker was killed during this read: nginx never sees these
            // bytes, so it makes no request of them.
            return 0;
        }
        let Some(st) = stats((*conn).slot) else {
            return 0;
        };
        inc_local(&raw mut (*st).requests);
        (*conn).requests = (*conn).requests.wrapping_add(1);
        (*conn).resp_started = 0;
        (*conn).sendfile_left = 0;
        if (*conn).port == 0 {
            (*conn).port = local_port(sk);
        }
        red::start(conn, st, &a, ret);
        set_phase(conn, st, PHASE_READING);
    }
    0
}

/// Sets a connection aside as not HTTP/1.x, once, and counts it by reason.
#[inline(always)]
fn mark_unparsed(conn: *mut Conn, kind: u8) {
    // SAFETY: `conn` comes from a storage lookup in this invocation; `st` is
    // a live per-CPU value.
    unsafe {
        (*conn).unparsed = kind;
        let Some(st) = stats((*conn).slot) else {
            return;
        };
        let field = if kind == UNPARSED_TLS {
            &raw mut (*st).unparsed_tls
        } else if kind == UNPARSED_HTTP2 {
            &raw mut (*st).unparsed_http2
        } else {
            &raw mut (*st).unparsed_other
        };
        inc_local(field);
    }
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn ngx_send(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    let Some(conn) = conn_of(sk) else {
        return 0;
    };
    let ret: i32 = ctx.arg(1);
    // SAFETY: `conn` and `st` come from lookups in this invocation.
    unsafe {
        let phase = (*conn).phase;
        if (*conn).unparsed != UNPARSED_NONE {
            // Not HTTP/1.x: it stays waiting (see mark_unparsed).
            return 0;
        }
        if phase == PHASE_CLOSED {
            // Reset before nginx answered: the status it tries to send is
            // the one it logs (red::closing).
            if (*conn).req_start_ns != 0 {
                red::response(conn, &syscall_args());
            }
            return 0;
        }
        let Some(st) = stats((*conn).slot) else {
            return 0;
        };
        let a = syscall_args();
        if ret > 0 {
            let started = (*conn).resp_started != 0;
            if !started && (phase == PHASE_READING || phase == PHASE_WRITING) {
                // First write since the request began (or since 100 Continue):
                // the response, unless it is the 25-byte interim answer.
                if !(is_plain_write(&a) && a.arg3 == CONTINUE_LEN && write_head(&a) == Head::Interim) {
                    (*conn).resp_started = 1;
                    inc_local(&raw mut (*st).responses);
                    red::response(conn, &a);
                }
            } else if started && phase == PHASE_WAITING && a.nr != SYS_SENDFILE && write_head(&a) == Head::Final {
                // A new status line after a complete response with no read in
                // between: nginx made the next request from bytes it had
                // already read (pipelining).
                inc_local(&raw mut (*st).requests);
                inc_local(&raw mut (*st).responses);
                (*conn).requests = (*conn).requests.wrapping_add(1);
                red::pipelined(conn, st);
                red::response(conn, &a);
            } else if !started && phase == PHASE_WAITING {
                // Found open at start, mid-request: nginx counted that request
                // before we watched; just follow the response.
                (*conn).resp_started = 1;
            }
            red::sent(conn, ret);
        } else if (*conn).resp_started == 0 && (phase == PHASE_READING || phase == PHASE_WRITING) {
            // A failed first write (reset): nginx logs the status it tried.
            red::response(conn, &a);
        }
        let blocked = is_blocked(sk, &a, ret);
        if blocked {
            inc_local(&raw mut (*st).blocked_sends);
        }
        let unfinished = sendfile_unfinished(conn, &a, ret);
        // Done writing once a final response went out in full; until then (or
        // while the socket refuses data, or a sendfile call is still sending)
        // the request is in the writing phase.
        let next = if blocked || unfinished || (*conn).resp_started == 0 {
            PHASE_WRITING
        } else {
            red::completed(conn);
            PHASE_WAITING
        };
        set_phase(conn, st, next);
    }
    0
}

#[inline(always)]
fn is_plain_write(a: &SyscallArgs) -> bool {
    a.nr == SYS_WRITE || a.nr == SYS_SENDTO
}

/// The socket did not take the whole write: nginx waits to write more.
/// sendfile is judged by [`sendfile_unfinished`] instead: one call is several
/// sends, and only an error among them means the socket refused data.
#[inline(always)]
fn is_blocked(sk: *const c_void, a: &SyscallArgs, ret: i32) -> bool {
    if ret < 0 {
        return true;
    }
    if is_plain_write(a) {
        return (ret as u64) < a.arg3;
    }
    if a.nr == SYS_SENDFILE {
        return false;
    }
    // writev and the rest: a short write leaves the send buffer full
    // (sk_stream_memory_free() false), which is what stopped it.
    let off = offsets();
    if off.valid == 0 {
        return false;
    }
    let base = sk as *const u8;
    // SAFETY: `sk` is the tracepoint's `struct sock *`, a BTF pointer: plain
    // loads at field offsets the verifier knows (KERNEL_OFFSETS is frozen)
    // and checks against the type, instead of a bpf_probe_read_kernel call
    // each (this runs once per keep-alive response).
    unsafe {
        let queued = ptr::read_volatile(base.add(off.sk_wmem_queued as usize) as *const i32);
        let sndbuf = ptr::read_volatile(base.add(off.sk_sndbuf as usize) as *const i32);
        queued >= sndbuf
    }
}

/// True while the sendfile(2) call this send belongs to has more to send.
///
/// The kernel splices a file to a socket one pipe-full at a time (64 KiB
/// with the default pipe), and each piece is its own sendmsg, so its own
/// sock_send_length event carrying that piece's length, not the call's. A
/// call is finished when its pieces add up to its count; one that stops
/// short (the socket's buffer filled) ends with a failed piece (EAGAIN),
/// which is_blocked() sees. Taking one piece for the whole call left the
/// connection `writing` after every response of more than a pipe-full, so
/// the next request on a keep-alive connection went uncounted.
#[inline(always)]
fn sendfile_unfinished(conn: *mut Conn, a: &SyscallArgs, ret: i32) -> bool {
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    unsafe {
        if a.nr != SYS_SENDFILE || ret < 0 {
            // Any other write, or an error, ends a sendfile call.
            (*conn).sendfile_left = 0;
            return false;
        }
        let left = if (*conn).sendfile_left == 0 {
            // sendfile's count is capped at MAX_RW_COUNT (< 2^31) by the kernel.
            if a.arg4 > u32::MAX as u64 {
                u32::MAX
            } else {
                a.arg4 as u32
            }
        } else {
            (*conn).sendfile_left
        };
        let sent = ret as u32;
        if sent >= left {
            (*conn).sendfile_left = 0;
            false
        } else {
            (*conn).sendfile_left = left - sent;
            true
        }
    }
}

// Benchmark floor: the same four hooks with empty programs, attached instead
// of the real ones only when the agent runs with NGXPROBE_EBPF_FLOOR=1 (used
// by `cargo xtask bench overhead --floor`). What they cost is the price of
// being attached to these tracepoints at all (dispatch, plus bpf_stats' own
// clock reads), which no program body can go below.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_set_state(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn floor_destroy_sock(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_recv(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn floor_send(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
