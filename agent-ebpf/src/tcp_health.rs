//! TCP health of nginx's client connections, and nginx worker exits.
//!
//! Every hook here fires only on the event itself, never per packet or per
//! syscall:
//! - `tcp_retransmit_skb`: a segment retransmitted (counted in segments, as
//!   the kernel's RetransSegs counts them), on a connection nginx accepted.
//! - `tcp_retransmit_synack`: a SYN-ACK retransmitted by a listener nginx
//!   owns (request sockets have no storage: attributed by netns + port).
//! - `tcp_send_reset` / `tcp_receive_reset`: an RST on one of nginx's
//!   connections; the socket is marked (RESET_MARKS) so its close counts as
//!   a reset.
//! - `inet_sock_set_state` to TCP_CLOSE (main.rs calls [`on_close_state`]):
//!   a connection the kernel timed out is marked (sk_err is read once).
//! - `tcp_destroy_sock` (the program in main.rs calls [`on_destroy`]): the
//!   connection's cause of end, its time stalled by the peer's receive window
//!   or the send buffer, and its distributions (RTT, lifetime, requests, bytes).
//! - `sched_process_exit` / `mark_victim`: a child of an nginx master (a
//!   worker, cache manager or loader) exits, by itself, by a signal, or
//!   chosen by the OOM killer.
use core::ffi::c_void;

use agent_common::{
    CLOSE_NORMAL, CLOSE_RESET, CLOSE_TIMEOUT, Conn, ConnHists, Hist, LISTEN_SLOT_MASK, ListenKey, MAX_INSTANCES,
    MAX_LISTENERS, TcpCounters, TcpKey, TcpOffsets, UNPARSED_NONE, WorkerExits, hist_bucket,
};
use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_jiffies64, bpf_ktime_get_ns, bpf_sk_storage_get, bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};

use crate::{LISTENERS, add_u, conn_of, offsets};

/// Filled in by userspace at load time from /sys/kernel/btf/vmlinux.
#[unsafe(no_mangle)]
static TCP_OFFSETS: TcpOffsets = TcpOffsets {
    sk_err: 0,
    inet_sport: 0,
    srtt_us: 0,
    bytes_sent: 0,
    bytes_received: 0,
    segs_out: 0,
    chrono_type: 0,
    chrono_start: 0,
    chrono_stat: 0,
    skb_gso_segs: 0,
    task_exit_code: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_pending_signal: 0,
    valid: 0,
};

/// Per (instance slot, listener port) event counters.
#[map]
static TCP_COUNTERS: PerCpuHashMap<TcpKey, TcpCounters> = PerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Per instance slot: distributions of connections at close.
#[map]
static CONN_HISTS: PerCpuArray<ConnHists> = PerCpuArray::with_max_entries(MAX_INSTANCES + 1, 0);

/// Per instance slot: exits of its master's children.
#[map]
static WORKER_EXITS: PerCpuArray<WorkerExits> = PerCpuArray::with_max_entries(MAX_INSTANCES + 1, 0);

/// nginx master tgid → instance slot (userspace keeps it equal to discovery).
#[map]
static NGINX_MASTERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_INSTANCES * 4, 0);

/// Children of an nginx master chosen by the OOM killer, until they exit.
#[map]
static OOM_VICTIMS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Connections an RST was sent (bit 0) or received (bit 1) on, or that the
/// kernel timed out (bit 2): created only at such an event, read once at the
/// socket's destruction.
#[btf_map]
static RESET_MARKS: SkStorage<u32> = SkStorage::new();

const RST_SENT: u32 = 1;
const RST_RECEIVED: u32 = 2;
/// The kernel closed the socket with sk_err ETIMEDOUT (see [`on_close_state`]).
const TIMED_OUT: u32 = 4;
const BPF_NOEXIST: u64 = 1;
const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;
const ECONNREFUSED: i32 = 111;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;
const ETIMEDOUT: i32 = 110;
const TCP_CHRONO_RWND_LIMITED: u8 = 2;
const TCP_CHRONO_SNDBUF_LIMITED: u8 = 3;

#[inline(always)]
fn tcp_offsets() -> TcpOffsets {
    // SAFETY: a read of our own global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&TCP_OFFSETS) }
}

/// Reads a `T` at `base + off` of kernel memory (0 if unreadable).
#[inline(always)]
fn read_at<T: Copy + Default>(base: *const c_void, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address; offsets come from BTF.
    unsafe { bpf_probe_read_kernel((base as *const u8).add(off as usize) as *const T) }.unwrap_or_default()
}

/// A field of a kernel struct through a BTF pointer (a tracepoint's
/// argument, or a pointer field loaded through one): a plain load the
/// verifier checks against the type at an offset it knows (the offsets are
/// frozen read-only data), where bpf_probe_read_kernel is a helper call
/// (~30–100 ns on this VM). Only for fields of the pointer's own type.
#[inline(always)]
pub(crate) fn load<T: Copy>(base: *const c_void, off: u32) -> T {
    // SAFETY: see above; the verifier refuses the program otherwise.
    unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize) as *const T) }
}

/// The connection's local port: skc_num, or inet_sport once the kernel
/// zeroed skc_num (unhashing at TCP_CLOSE).
#[inline(always)]
fn local_port(sk: *const c_void, t: &TcpOffsets) -> u16 {
    let num: u16 = load(sk, offsets().skc_num);
    if num != 0 {
        return num;
    }
    u16::from_be(read_at::<u16>(sk, t.inet_sport))
}

/// True if the current thread is being killed (SIGKILL pending: kill -9,
/// or a fatal signal to its process). A read that returns now is never
/// seen by the program: the thread dies on its way back to user space.
#[inline(always)]
pub fn current_is_dying() -> bool {
    CurrentTask::get().is_some_and(|t| t.is_dying())
}

/// The current task through its BTF pointer: its fields are plain loads
/// (the verifier knows the type and, from the frozen TCP_OFFSETS, the
/// offsets), not a bpf_probe_read_kernel call each, which on a VM costs
/// ~100 ns per call in the request uprobe.
pub(crate) struct CurrentTask {
    task: *const u8,
    t: TcpOffsets,
}

impl CurrentTask {
    /// None if the offsets are unknown.
    #[inline(always)]
    pub(crate) fn get() -> Option<Self> {
        let t = tcp_offsets();
        if t.valid == 0 {
            return None;
        }
        // SAFETY: the helper takes no argument; it returns the current
        // task (never NULL) as a trusted BTF pointer.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        Some(CurrentTask { task, t })
    }

    /// As [`current_is_dying`].
    #[inline(always)]
    pub(crate) fn is_dying(&self) -> bool {
        const SIGKILL_BIT: u64 = 1 << (9 - 1);
        // SAFETY: a load through a BTF pointer at a field's offset; the
        // verifier checks it against the type.
        let pending =
            unsafe { core::ptr::read_volatile(self.task.add(self.t.task_pending_signal as usize) as *const u64) };
        pending & SIGKILL_BIT != 0
    }

    /// As [`current_parent_tgid`].
    #[inline(always)]
    pub(crate) fn parent_tgid(&self) -> u32 {
        // SAFETY: as in is_dying; the parent is a task_struct pointer field.
        unsafe {
            let parent = core::ptr::read_volatile(self.task.add(self.t.task_real_parent as usize) as *const *const u8);
            if parent.is_null() {
                return 0;
            }
            core::ptr::read_volatile(parent.add(self.t.task_tgid as usize) as *const u32)
        }
    }
}

/// The counters of (slot, port), created on first use.
#[inline(always)]
fn counters(slot: u32, port: u16) -> Option<*mut TcpCounters> {
    let key = TcpKey { slot, port, _pad: 0 };
    if let Some(p) = TCP_COUNTERS.get_ptr_mut(key) {
        return Some(p);
    }
    // Another CPU may win the race: then its entry is used.
    let _ = TCP_COUNTERS.insert(key, TcpCounters::default(), BPF_NOEXIST);
    TCP_COUNTERS.get_ptr_mut(key)
}

/// nginx's connection state of `sk` with its slot and local port, if it is a
/// connection nginx accepted.
#[inline(always)]
fn nginx_conn(sk: *const c_void) -> Option<(*mut Conn, u16)> {
    let t = tcp_offsets();
    if t.valid == 0 || sk.is_null() {
        return None;
    }
    let conn = conn_of(sk)?;
    Some((conn, local_port(sk, &t)))
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn ngx_tcp_retransmit(ctx: BtfTracePointContext) -> u32 {
    // The tracepoint fires for every attempt. RetransSegs counts those that
    // reached tcp_transmit_skb, including ones a qdisc or veth then dropped
    // (err > 0, NET_XMIT_DROP); attempts given up before (err < 0: TSQ
    // -EAGAIN, -ENOMEM, ...) it does not count, and neither do we.
    let err: i32 = ctx.arg(2);
    if err < 0 {
        return 0;
    }
    let sk: *const c_void = ctx.arg(0);
    let Some((conn, port)) = nginx_conn(sk) else {
        return 0;
    };
    let skb: *const c_void = ctx.arg(1);
    let segs: u16 = read_at(skb, tcp_offsets().skb_gso_segs);
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    let slot = unsafe { (*conn).slot };
    if let Some(c) = counters(slot, port) {
        // SAFETY: `c` is a live per-CPU map value.
        unsafe { add_u(&raw mut (*c).retrans_segs, u64::from(segs.max(1))) };
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn ngx_tcp_retransmit_synack(ctx: BtfTracePointContext) -> u32 {
    // arg 0 is the listener; its port and netns name nginx's listener.
    let sk: *const c_void = ctx.arg(0);
    let off = offsets();
    if off.valid == 0 || sk.is_null() {
        return 0;
    }
    let port: u16 = read_at(sk, off.skc_num);
    let net: *const c_void = read_at::<u64>(sk, off.skc_net) as *const c_void;
    if net.is_null() {
        return 0;
    }
    let netns: u32 = read_at(net, off.net_ns_inum);
    // SAFETY: plain value read from our own map.
    let Some(slot) = (unsafe { LISTENERS.get(ListenKey { netns, port, _pad: 0 }) })
        .copied()
        .map(|v| v & LISTEN_SLOT_MASK)
    else {
        return 0;
    };
    if let Some(c) = counters(slot, port) {
        // SAFETY: `c` is a live per-CPU map value.
        unsafe { add_u(&raw mut (*c).synack_retrans, 1) };
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn ngx_tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    on_reset(sk, RST_SENT);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn ngx_tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    on_reset(sk, RST_RECEIVED);
    0
}

/// Counts an RST on one of nginx's connections and marks the socket.
/// Resets sent without a full socket (a reply to a segment for no
/// connection, a time-wait socket) are not nginx's connections: skipped.
#[inline(always)]
fn on_reset(sk: *const c_void, bit: u32) {
    let Some((conn, port)) = nginx_conn(sk) else {
        return;
    };
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    let slot = unsafe { (*conn).slot };
    if let Some(c) = counters(slot, port) {
        let field = if bit == RST_SENT {
            // SAFETY: `c` is a live per-CPU map value.
            unsafe { &raw mut (*c).resets_sent }
        } else {
            // SAFETY: as above.
            unsafe { &raw mut (*c).resets_received }
        };
        add_u(field, 1);
    }
    mark(sk, bit);
}

/// Sets `bit` in the socket's RESET_MARKS (created if needed).
#[inline(always)]
fn mark(sk: *const c_void, bit: u32) {
    let zero: u32 = 0;
    // SAFETY: `sk` is the tracepoint's full socket (it has our storage).
    let mark = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&RESET_MARKS).cast_mut().cast(),
            sk as *mut c_void,
            core::ptr::from_ref(&zero).cast_mut().cast(),
            BPF_SK_STORAGE_GET_F_CREATE,
        )
    } as *mut u32;
    if !mark.is_null() {
        // SAFETY: `mark` is this socket's storage.
        unsafe { *mark |= bit };
    }
}

/// A socket moved to TCP_CLOSE (main.rs's inet_sock_set_state program).
/// When the kernel gives up on a connection (tcp_write_err) it sets sk_err
/// to ETIMEDOUT right before this state change; nginx's next read or write
/// takes the error and clears sk_err before the socket is destroyed, so the
/// timeout is marked here. A plain close costs one read of sk_err.
#[inline(always)]
pub fn on_close_state(sk: *const c_void) {
    let t = tcp_offsets();
    if t.valid == 0 {
        return;
    }
    let err: i32 = load(sk, t.sk_err);
    if err != ETIMEDOUT {
        return;
    }
    if nginx_conn(sk).is_some() {
        mark(sk, TIMED_OUT);
    }
}

/// The socket of a connection nginx accepted is being destroyed: count how
/// it ended and observe its distributions. Called by main.rs's
/// tcp_destroy_sock program (once per socket).
#[inline(always)]
pub fn on_destroy(sk: *const c_void, conn: *mut Conn) {
    let t = tcp_offsets();
    if t.valid == 0 {
        return;
    }
    // SAFETY: `conn` comes from a storage lookup in this invocation.
    let (slot, requests, accepted_ns, parsed) = unsafe {
        (
            (*conn).slot,
            (*conn).requests,
            (*conn).accepted_ns,
            (*conn).unparsed == UNPARSED_NONE,
        )
    };
    let port = local_port(sk, &t);
    // SAFETY: `sk` is the tracepoint's socket.
    let mark = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&RESET_MARKS).cast_mut().cast(),
            sk as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    } as *const u32;
    // SAFETY: `mark` is this socket's storage when not null.
    let marks = if mark.is_null() { 0 } else { unsafe { *mark } };
    let reset_seen = marks & (RST_SENT | RST_RECEIVED) != 0;
    let err: i32 = load(sk, t.sk_err);
    let cause = if err == ETIMEDOUT || marks & TIMED_OUT != 0 {
        // The kernel gave up: retransmissions, zero-window probes or
        // keepalives unanswered (tcp_write_err).
        CLOSE_TIMEOUT
    } else if reset_seen || err == ECONNRESET || err == EPIPE || err == ECONNREFUSED {
        CLOSE_RESET
    } else {
        CLOSE_NORMAL
    };
    // The tcp_sock fields through the socket as a tcp_sock BTF pointer
    // (the offsets are from the start of tcp_sock, which starts with the
    // sock): plain loads.
    // SAFETY: the helper checks the socket's type; NULL if not TCP.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const c_void;
    if tp.is_null() {
        return;
    }
    let chrono_type: u8 = read_at(tp, t.chrono_type);
    let chrono_start: u32 = load(tp, t.chrono_start);
    // chrono_stat[i] is TCP_CHRONO_(i + 1); the running one is not yet added.
    let mut rwnd: u32 = load(tp, t.chrono_stat + 4);
    let mut sndbuf: u32 = load(tp, t.chrono_stat + 8);
    if chrono_type == TCP_CHRONO_RWND_LIMITED || chrono_type == TCP_CHRONO_SNDBUF_LIMITED {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_jiffies64() } as u32;
        let running = now.wrapping_sub(chrono_start);
        if chrono_type == TCP_CHRONO_RWND_LIMITED {
            rwnd = rwnd.wrapping_add(running);
        } else {
            sndbuf = sndbuf.wrapping_add(running);
        }
    }
    let segs_out: u32 = load(tp, t.segs_out);
    if let Some(c) = counters(slot, port) {
        // SAFETY: `c` is a live per-CPU map value; the destroy may run in
        // softirq and process context on one CPU, so adds are atomic.
        unsafe {
            add_u(&raw mut (*c).closed[cause], 1);
            add_u(&raw mut (*c).rwnd_limited_jiffies, u64::from(rwnd));
            add_u(&raw mut (*c).sndbuf_limited_jiffies, u64::from(sndbuf));
            add_u(&raw mut (*c).segs_out, u64::from(segs_out));
        }
    }
    let Some(h) = CONN_HISTS.get_ptr_mut(slot) else {
        return;
    };
    let srtt: u32 = load(tp, t.srtt_us);
    let sent: u64 = load(tp, t.bytes_sent);
    let received: u64 = load(tp, t.bytes_received);
    // SAFETY: `h` is a live per-CPU map value.
    unsafe {
        observe(&raw mut (*h).rtt_us, u64::from(srtt >> 3));
        observe(&raw mut (*h).bytes_sent, sent);
        observe(&raw mut (*h).bytes_received, received);
        if parsed {
            // Requests of TLS/HTTP/2 connections are not counted: not observed.
            observe(&raw mut (*h).requests, u64::from(requests));
        }
        if accepted_ns != 0 {
            // Connections found open at start have no accept time.
            let now = bpf_ktime_get_ns();
            observe(&raw mut (*h).duration_ms, now.saturating_sub(accepted_ns) / 1_000_000);
        }
    }
}

#[inline(always)]
fn observe(h: *mut Hist, v: u64) {
    let b = hist_bucket(v);
    // SAFETY: `h` points into a live per-CPU map value; b < HIST_BUCKETS.
    unsafe {
        if let Some(slot) = (*h).buckets.get_mut(b) {
            add_u(slot, 1);
        }
        add_u(&raw mut (*h).sum, v);
    }
}

/// The tgid of the current task's parent (0 if the offsets are unknown or a
/// read fails): request records carry it, so that the agent attributes a
/// worker by its master even when no scan listed the worker.
#[inline(always)]
pub(crate) fn current_parent_tgid() -> u32 {
    CurrentTask::get().map_or(0, |t| t.parent_tgid())
}

/// The instance slot of `task`'s parent if that is an nginx master, with
/// `task`'s tgid.
#[inline(always)]
fn nginx_child(task: *const c_void, t: &TcpOffsets) -> Option<(u32, u32)> {
    if t.valid == 0 || task.is_null() {
        return None;
    }
    let parent: *const c_void = read_at::<u64>(task, t.task_real_parent) as *const c_void;
    if parent.is_null() {
        return None;
    }
    let ppid: u32 = read_at(parent, t.task_tgid);
    // SAFETY: plain value read from our own map.
    let slot = unsafe { NGINX_MASTERS.get(ppid) }.copied()?;
    Some((slot, read_at(task, t.task_tgid)))
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn ngx_process_exit(ctx: BtfTracePointContext) -> u32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff == 0 {
        // A thread, not the process.
        return 0;
    }
    let task: *const c_void = ctx.arg(0);
    let t = tcp_offsets();
    let Some((slot, tgid)) = nginx_child(task, &t) else {
        return 0;
    };
    let Some(e) = WORKER_EXITS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: plain value read from our own map.
    let oom = unsafe { OOM_VICTIMS.get(tgid) }.is_some();
    if oom {
        let _ = OOM_VICTIMS.remove(tgid);
    }
    let code: i32 = read_at(task, t.task_exit_code);
    let sig = (code & 0x7f) as usize;
    // SAFETY: `e` is a live per-CPU map value.
    unsafe {
        if oom {
            add_u(&raw mut (*e).oom, 1);
        } else if sig == 0 {
            add_u(&raw mut (*e).exited, 1);
        } else {
            let i = if sig < 32 { sig } else { 0 };
            if let Some(n) = (*e).by_signal.get_mut(i) {
                add_u(n, 1);
            }
        }
    }
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn ngx_oom_victim(ctx: BtfTracePointContext) -> u32 {
    let task: *const c_void = ctx.arg(0);
    let t = tcp_offsets();
    if let Some((_, tgid)) = nginx_child(task, &t) {
        let _ = OOM_VICTIMS.insert(tgid, 1, 0);
    }
    0
}

// Benchmark floor (see main.rs): the same hooks with empty programs.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn floor_tcp_retransmit(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn floor_tcp_retransmit_synack(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn floor_tcp_send_reset(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn floor_tcp_receive_reset(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn floor_process_exit(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn floor_oom_victim(_ctx: BtfTracePointContext) -> u32 {
    0
}
