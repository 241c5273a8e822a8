//! TCP health of nginx's client connections and nginx worker exits: the
//! types of the maps the tcp_health programs fill (agent-ebpf/src/tcp_health.rs).

/// Key of TCP_COUNTERS: an instance slot and the local port of the listener
/// the connection came in on (the listener is told apart by port, as in
/// LISTENERS: the netns is implied by the instance).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub slot: u32,
    /// Local port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Event counters of one (slot, listener), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpCounters {
    /// Segments retransmitted (tcp:tcp_retransmit_skb with err 0, counted in
    /// segments like the kernel's RetransSegs: tcp_skb_pcount of the skb).
    pub retrans_segs: u64,
    /// SYN-ACKs retransmitted for handshakes on this listener.
    pub synack_retrans: u64,
    /// RSTs sent on a connection (tcp:tcp_send_reset with our socket).
    pub resets_sent: u64,
    /// RSTs received on a connection (tcp:tcp_receive_reset).
    pub resets_received: u64,
    /// Connections destroyed, by cause (CLOSE_* index).
    pub closed: [u64; CLOSE_CAUSES],
    /// Jiffies the connections spent limited by the peer's receive window /
    /// by the socket's send buffer (tcp_sock chrono_stat at close).
    pub rwnd_limited_jiffies: u64,
    pub sndbuf_limited_jiffies: u64,
    /// Segments sent (tcp_sock segs_out, retransmits included), added at close.
    pub segs_out: u64,
}

/// `TcpCounters::closed` indexes.
pub const CLOSE_NORMAL: usize = 0;
pub const CLOSE_RESET: usize = 1;
pub const CLOSE_TIMEOUT: usize = 2;
pub const CLOSE_CAUSES: usize = 3;

/// Log2 histogram buckets: bucket i counts values v with v <= 2^i (and
/// v > 2^(i-1) for i > 0); the last bucket is everything above 2^(N-2).
pub const HIST_BUCKETS: usize = 32;

/// The bucket of `v`: ceil(log2(v)), 0 for v <= 1, capped at the last bucket.
#[inline(always)]
pub fn hist_bucket(v: u64) -> usize {
    if v <= 1 {
        return 0;
    }
    // Bit length of v - 1 by halving, not leading_zeros(): the BPF backend
    // expands that into arithmetic whose range the verifier cannot bound,
    // while these branches keep the index provably small.
    let mut x = v - 1;
    let mut bits = 0usize;
    if x >= 1 << 32 {
        bits += 32;
        x >>= 32;
    }
    if x >= 1 << 16 {
        bits += 16;
        x >>= 16;
    }
    if x >= 1 << 8 {
        bits += 8;
        x >>= 8;
    }
    if x >= 1 << 4 {
        bits += 4;
        x >>= 4;
    }
    if x >= 1 << 2 {
        bits += 2;
        x >>= 2;
    }
    if x >= 2 {
        bits += 2;
    } else {
        bits += x as usize;
    }
    if bits >= HIST_BUCKETS - 1 {
        HIST_BUCKETS - 1
    } else {
        bits
    }
}

/// One histogram: counts per bucket and the sum of the values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
    pub sum: u64,
}

/// Distributions of connections at close, per instance slot (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnHists {
    /// Smoothed RTT at close, microseconds.
    pub rtt_us: Hist,
    /// Accept to destroy, milliseconds (connections seen accepted only).
    pub duration_ms: Hist,
    /// Requests seen on the connection.
    pub requests: Hist,
    /// Bytes sent to the client (tcp_sock bytes_sent) / received from it.
    pub bytes_sent: Hist,
    pub bytes_received: Hist,
}

/// Worker exits of one instance slot, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerExits {
    /// Exited by themselves (exit status in exit_code, no signal).
    pub exited: u64,
    /// Chosen by the OOM killer (oom:mark_victim) before they died.
    pub oom: u64,
    /// Killed by signal N (index N, 1..=31); index 0: real-time signals.
    pub by_signal: [u64; 32],
}

/// Offsets the tcp_health programs need, read from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpOffsets {
    /// struct sock: sk_err (int).
    pub sk_err: u32,
    /// struct inet_sock: inet_sport (__be16), the local port once skc_num is 0.
    pub inet_sport: u32,
    /// struct tcp_sock: srtt_us (u32, <<3), bytes_sent, bytes_received (u64),
    /// segs_out (u32), chrono_type (u8), chrono_start (u32, jiffies),
    /// chrono_stat (u32[3], jiffies).
    pub srtt_us: u32,
    pub bytes_sent: u32,
    pub bytes_received: u32,
    pub segs_out: u32,
    pub chrono_type: u32,
    pub chrono_start: u32,
    pub chrono_stat: u32,
    /// struct sk_buff: cb; plus offsetof(struct tcp_skb_cb, tcp_gso_segs).
    pub skb_gso_segs: u32,
    /// struct task_struct: exit_code (int), tgid (pid_t), real_parent (pointer).
    pub task_exit_code: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    /// struct task_struct: pending.signal.sig[0] (the thread's own pending
    /// signals, where a fatal signal puts SIGKILL for every thread).
    pub task_pending_signal: u32,
    /// Non-zero once userspace filled the struct in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are #[repr(C)], Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::TcpKey {}
    unsafe impl aya::Pod for super::TcpCounters {}
    unsafe impl aya::Pod for super::ConnHists {}
    unsafe impl aya::Pod for super::WorkerExits {}
    unsafe impl aya::Pod for super::TcpOffsets {}
}

const _: () = assert!(core::mem::size_of::<TcpKey>() == 8);
const _: () = assert!(core::mem::size_of::<TcpCounters>() == 80);
const _: () = assert!(core::mem::size_of::<ConnHists>() == 5 * 33 * 8);
const _: () = assert!(core::mem::size_of::<WorkerExits>() == 34 * 8);
const _: () = assert!(core::mem::size_of::<TcpOffsets>() == 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ceil_log2() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        assert_eq!(hist_bucket(2), 1);
        assert_eq!(hist_bucket(3), 2);
        assert_eq!(hist_bucket(4), 2);
        assert_eq!(hist_bucket(5), 3);
        assert_eq!(hist_bucket(1 << 20), 20);
        assert_eq!(hist_bucket((1 << 20) + 1), 21);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
        // Every value is at most its bucket's bound 2^i (except the last, +Inf).
        for v in 0..5000u64 {
            let b = hist_bucket(v);
            assert!(v <= 1 << b, "{v} in {b}");
            assert!(b == 0 || v > 1 << (b - 1), "{v} in {b}");
        }
    }
}
