//! ngxprobe's eBPF side: derives nginx's stub_status counters from socket events.
//!
//! Hooks (all fire only on network events, never on other syscalls):
//! - `inet_sock_set_state`: a handshake completing on a port nginx listens on
//!   (matched by network namespace + port) is an accepted connection; the move
//!   out of ESTABLISHED/CLOSE_WAIT is nginx (or the peer) closing it.
//! - `sock_recv_length`: nginx read request bytes. Data on a connection with no
//!   request in progress starts a request, as ngx_http_alloc_request counts it.
//! - `sock_send_length`: nginx wrote. A final status line at the head of a write
//!   marks the response start (a second one without a read in between is a
//!   pipelined request); a short or refused write means nginx is still writing.
//! - `tcp_destroy_sock`: the socket is gone; forget it.
//!
//! Per-connection state lives in CONNS keyed by socket cookie; per-instance
//! counters in the per-CPU STATS array (userspace sums over CPUs).
#![no_std]
#![no_main]
// Atomic add on map values (the BPF target's core has no AtomicU64::fetch_add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod payload;

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use agent_common::{
    Conn, GLOBAL_SLOT, KernelOffsets, ListenKey, MAX_CONNS, MAX_INSTANCES, MAX_LISTENERS,
    PHASE_CLOSED, PHASE_READING, PHASE_WAITING, PHASE_WRITING, SlotStats,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_get_socket_cookie},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use payload::{SendHead, looks_like_request_start, send_head};

#[map]
static LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

#[map]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(MAX_CONNS, 0);

#[map]
static STATS: PerCpuArray<SlotStats> = PerCpuArray::with_max_entries(MAX_INSTANCES + 1, 0);

/// Filled in by userspace at load time from /sys/kernel/btf/vmlinux.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    skc_num: 0,
    skc_net: 0,
    net_ns_inum: 0,
    valid: 0,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const MSG_PEEK: i32 = 2;

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a read of our own global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
fn cookie(sk: *const c_void) -> u64 {
    // SAFETY: `sk` is the tracepoint's `struct sock *` argument (a BTF pointer).
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

#[inline(always)]
fn stats(slot: u32) -> Option<*mut SlotStats> {
    STATS.get_ptr_mut(slot)
}

// Per-CPU values can still be touched by a softirq that interrupts a program on
// the same CPU, so updates are atomic (uncontended, hence cheap).
#[inline(always)]
fn add_u(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a live per-CPU map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

#[inline(always)]
fn add_i(field: *mut i64, v: i64) {
    // SAFETY: as above.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(field, v) };
}

/// Moves a connection to `phase`, keeping the reading/writing gauges in step.
#[inline(always)]
fn set_phase(conn: *mut Conn, st: *mut SlotStats, phase: u8) {
    // SAFETY: both pointers come from map lookups in this program invocation.
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
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        on_established(sk);
    } else if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK || new == TCP_CLOSE {
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
    let base = sk as *const u8;
    // SAFETY: reads of kernel memory through bpf_probe_read_kernel at offsets
    // taken from this kernel's BTF.
    let (port, netns) = unsafe {
        let Ok(port) = bpf_probe_read_kernel(base.add(off.skc_num as usize) as *const u16) else {
            return;
        };
        let Ok(net) = bpf_probe_read_kernel(base.add(off.skc_net as usize) as *const *const u8)
        else {
            return;
        };
        let Ok(inum) = bpf_probe_read_kernel(net.add(off.net_ns_inum as usize) as *const u32)
        else {
            return;
        };
        (port, inum)
    };
    let key = ListenKey { netns, port, _pad: 0 };
    // SAFETY: plain value read from our own map.
    let Some(slot) = (unsafe { LISTENERS.get(&key) }).copied() else {
        return;
    };
    let Some(st) = stats(slot) else {
        return;
    };
    // SAFETY: `st` is a live per-CPU value.
    unsafe { add_u(&raw mut (*st).accepted, 1) };
    let conn = Conn {
        slot,
        phase: PHASE_WAITING,
        // SAFETY: helper without preconditions.
        accepted_ns: unsafe { bpf_ktime_get_ns() },
        ..Conn::default()
    };
    if CONNS.insert(cookie(sk), conn, BPF_NOEXIST as u64).is_ok() {
        // SAFETY: as above.
        unsafe { add_i(&raw mut (*st).active, 1) };
    } else if let Some(g) = stats(GLOBAL_SLOT) {
        // SAFETY: as above.
        unsafe { add_u(&raw mut (*g).conn_map_full, 1) };
    }
}

/// nginx closed the connection (FIN_WAIT1 / LAST_ACK), or it was reset/closed:
/// it leaves `active` exactly once; the entry stays until tcp_destroy_sock so a
/// late read cannot re-create it.
#[inline(always)]
fn on_closing(sk: *const c_void) {
    let Some(conn) = CONNS.get_ptr_mut(cookie(sk)) else {
        return;
    };
    close_conn(conn);
}

#[inline(always)]
fn close_conn(conn: *mut Conn) {
    // SAFETY: `conn` comes from a CONNS lookup in this invocation.
    unsafe {
        if (*conn).phase == PHASE_CLOSED {
            return;
        }
        let Some(st) = stats((*conn).slot) else {
            return;
        };
        set_phase(conn, st, PHASE_WAITING);
        (*conn).phase = PHASE_CLOSED;
        add_i(&raw mut (*st).active, -1);
        add_u(&raw mut (*st).closed, 1);
    }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn ngx_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    let key = cookie(sk);
    if let Some(conn) = CONNS.get_ptr_mut(key) {
        close_conn(conn);
        let _ = CONNS.remove(key);
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
    let Some(conn) = CONNS.get_ptr_mut(cookie(sk)) else {
        return 0;
    };
    // SAFETY: `conn` and `st` come from map lookups in this invocation.
    unsafe {
        if (*conn).phase != PHASE_WAITING {
            // Reading the rest of a header, or a request body: same request.
            return 0;
        }
        // After a response, data is a new request unless it is the tail of a
        // body nginx discards after answering early (405, 413, ...).
        if (*conn).resp_started != 0 && !looks_like_request_start() {
            return 0;
        }
        let Some(st) = stats((*conn).slot) else {
            return 0;
        };
        add_u(&raw mut (*st).requests, 1);
        add_u(&raw mut (*st).events, 1);
        (*conn).requests = (*conn).requests.wrapping_add(1);
        (*conn).resp_started = 0;
        (*conn).req_start_ns = bpf_ktime_get_ns();
        set_phase(conn, st, PHASE_READING);
    }
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn ngx_send(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    let Some(conn) = CONNS.get_ptr_mut(cookie(sk)) else {
        return 0;
    };
    let ret: i32 = ctx.arg(1);
    // SAFETY: `conn` and `st` come from map lookups in this invocation.
    unsafe {
        if (*conn).phase == PHASE_CLOSED {
            return 0;
        }
        let Some(st) = stats((*conn).slot) else {
            return 0;
        };
        add_u(&raw mut (*st).events, 1);
        let head = send_head(ret);
        if head.final_status {
            if (*conn).resp_started != 0 {
                // A second response with no read in between: nginx created the
                // next (pipelined) request from bytes it had already read.
                add_u(&raw mut (*st).requests, 1);
                (*conn).requests = (*conn).requests.wrapping_add(1);
                (*conn).req_start_ns = bpf_ktime_get_ns();
            }
            (*conn).resp_started = 1;
            add_u(&raw mut (*st).responses, 1);
        }
        let blocked = is_blocked(&head, ret);
        if blocked {
            add_u(&raw mut (*st).blocked_sends, 1);
        }
        // Done writing once a final response went out in full; until then (or
        // while the socket refuses data) the request is in the writing phase.
        let phase = if blocked || (*conn).resp_started == 0 {
            PHASE_WRITING
        } else {
            PHASE_WAITING
        };
        set_phase(conn, st, phase);
    }
    0
}

#[inline(always)]
fn is_blocked(head: &SendHead, ret: i32) -> bool {
    if ret < 0 {
        return true;
    }
    head.requested != 0 && (ret as u64) < head.requested
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
