//! Types shared between the eBPF programs (agent-ebpf) and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, sized in multiples of 8 bytes with explicit
//! padding fields, so the kernel and user views of a map value can never disagree.
#![cfg_attr(not(test), no_std)]

mod first_bytes;
mod nginx_offsets;
mod request_line;
mod tcp_health;

pub use first_bytes::{FIRST_BYTES, PROXY_HEADER, classify_first_bytes};
pub use nginx_offsets::{
    CONN_SPAN_MAX, MAX_NGINX_BINARIES, NGX_HTTP_REQUEST_SIGNATURE, NginxOffsets, REQ_FLAG_HTTP2, REQ_FLAG_NO_LINE,
    REQ_FLAG_NO_VERSION, REQ_FLAG_SOCKET, REQ_FLAG_SSL, REQ_SPAN_MAX, RequestProbeStats, RequestRecord,
    SERVER_NAME_MAX,
};
pub use request_line::{
    LINE_BYTES, LINE_TAIL, LINE_WORDS, METHOD_BYTES, METHOD_UNKNOWN, STATUS_HEAD, VERSION_0_9, VERSION_UNKNOWN,
    line_of_words, method_bit, method_of_words, status_of_head, version_from_line_end,
};
pub use tcp_health::{
    CLOSE_CAUSES, CLOSE_NORMAL, CLOSE_RESET, CLOSE_TIMEOUT, ConnHists, HIST_BUCKETS, Hist, TcpCounters, TcpKey,
    TcpOffsets, WorkerExits, hist_bucket,
};

/// Instance slots: one per nginx instance (master + workers) on the node.
/// Slot `GLOBAL_SLOT` holds node-wide self-metrics of the eBPF side.
pub const MAX_INSTANCES: u32 = 255;
pub const GLOBAL_SLOT: u32 = MAX_INSTANCES;
/// Connections open before the agent started, handed over by cookie.
pub const MAX_SEEDS: u32 = 65_536;
/// (netns, port) pairs nginx listens on.
pub const MAX_LISTENERS: u32 = 4096;

/// Phase of a connection in stub_status's terms.
pub const PHASE_WAITING: u8 = 0;
pub const PHASE_READING: u8 = 1;
pub const PHASE_WRITING: u8 = 2;
pub const PHASE_CLOSED: u8 = 3;

/// Why a connection's bytes are not read as HTTP/1.x (`Conn::unparsed`).
/// Such a connection counts in accepted/handled/active like any other, but
/// its requests are not counted and it stays `waiting` (never reading or
/// writing): the probe does not guess what it cannot parse.
pub const UNPARSED_NONE: u8 = 0;
/// The first bytes are a TLS record (a ClientHello on a fresh connection).
pub const UNPARSED_TLS: u8 = 1;
/// The first bytes are the HTTP/2 connection preface (h2c, prior knowledge).
pub const UNPARSED_HTTP2: u8 = 2;
/// The first bytes are neither of those nor the start of an HTTP/1.x request line.
pub const UNPARSED_OTHER: u8 = 3;

/// Bit of a LISTENERS (and SEEDS) value set when the port's listeners speak
/// only cleartext HTTP/2 (nginx before 1.25.1, `listen ... http2` without
/// TLS): nginx makes no HTTP/1.x request of any bytes read there. The rest
/// of the value is the instance slot ([`LISTEN_SLOT_MASK`]).
pub const LISTEN_H2C_ONLY: u32 = 1 << 31;
pub const LISTEN_SLOT_MASK: u32 = !LISTEN_H2C_ONLY;

/// Key of the LISTENERS map: a listening port in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    /// Inode number of the network namespace (as in `stat /proc/PID/ns/net`).
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Per-connection state, in the socket's local storage (CONN_STORE).
///
/// Kept small and fixed-size. The `red_*` fields are the per-request record
/// under construction (plaintext RED from the socket probes, only on slots
/// RED_SLOTS turns on): filled at the request's start and response, sent to
/// the ring buffer when the next request starts or the connection closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn {
    /// Instance slot the connection belongs to.
    pub slot: u32,
    /// One of the PHASE_* constants.
    pub phase: u8,
    /// 1 once a final (non-1xx) response status line was sent for the current request.
    pub resp_started: u8,
    /// 1 if the connection was found by the userspace scan at start (sock_diag),
    /// not seen being accepted.
    pub seeded: u8,
    /// One of the UNPARSED_* constants, decided at the connection's first read.
    pub unparsed: u8,
    /// Requests seen on this connection.
    pub requests: u32,
    /// Bytes nginx asked for in its first read on this connection: its
    /// client_header_buffer_size, which every later request-line read also
    /// asks for (a discarded body is read in other sizes).
    pub first_read_size: u32,
    /// bpf_ktime_get_ns() at accept (the connection's lifetime at close);
    /// 0 for connections found open at start.
    pub accepted_ns: u64,
    /// bpf_ktime_get_ns() at the read that started the request with a
    /// pending record (0: none pending).
    pub req_start_ns: u64,
    /// Bytes of the sendfile(2) call in progress not yet seen in a send
    /// event (one call reaches TCP as several sends); 0 between calls.
    pub sendfile_left: u32,
    /// Local port (host order), from the accept; 0 until known.
    pub port: u16,
    /// REQ_FLAG_* bits of the pending record.
    pub red_flags: u16,
    /// Process that read the request (the record's tgid: the record may be
    /// sent from softirq, where the current task is anyone).
    pub red_tgid: u32,
    /// Status of the response's status line (0: none seen yet).
    pub red_status: u16,
    /// 1 if the connection came in on an h2c-only port (LISTEN_H2C_ONLY):
    /// its first read is never an HTTP/1.x request.
    pub h2c_only: u8,
    pub _pad1: u8,
    /// nginx's method bit and http_version of the pending request.
    pub red_method: u32,
    pub red_version: u32,
    /// Bytes of the response header (the status line's buffer).
    pub red_header: u64,
    /// bpf_ktime_get_ns() at the end of the send that completed the response.
    pub red_end_ns: u64,
    /// Bytes received and sent for the pending request.
    pub red_received: u64,
    pub red_sent: u64,
}

/// Per-CPU counters of one instance slot. Counters only grow; the gauges are
/// signed per-CPU deltas whose sum over CPUs is the gauge's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotStats {
    pub accepted: u64,
    pub requests: u64,
    pub closed: u64,
    /// Responses whose first send carried a final status line.
    pub responses: u64,
    /// Sends that left data behind (short write or EAGAIN): nginx waits to write.
    pub blocked_sends: u64,
    /// Accepts whose connection could not be tracked because CONNS was full.
    pub conn_map_full: u64,
    pub active: i64,
    pub reading: i64,
    pub writing: i64,
    /// Reserved (kept for layout stability).
    pub events: u64,
    /// Connections whose first bytes were TLS, the HTTP/2 preface, or
    /// anything else that is not an HTTP/1.x request line (UNPARSED_*).
    pub unparsed_tls: u64,
    pub unparsed_http2: u64,
    pub unparsed_other: u64,
    /// Per-request records the socket probes wrote to the ring buffer, and
    /// those lost because it was full.
    pub red_records: u64,
    pub red_ring_full: u64,
}

/// Kernel structure offsets, read from the running kernel's BTF in userspace at
/// load time (Rust eBPF has no CO-RE field relocations), passed in as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// offsetof(struct sock, sk_wmem_queued) (int).
    pub sk_wmem_queued: u32,
    /// offsetof(struct sock, sk_sndbuf) (int).
    pub sk_sndbuf: u32,
    /// offsetof(struct sock_common, skc_num): local port, host order (u16).
    pub skc_num: u32,
    /// offsetof(struct sock_common, skc_net): `possible_net_t`, whose first
    /// member is `struct net *net`.
    pub skc_net: u32,
    /// offsetof(struct net, ns) + offsetof(struct ns_common, inum).
    pub net_ns_inum: u32,
    /// Non-zero once userspace filled the struct in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are #[repr(C)], Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Conn {}
    unsafe impl aya::Pod for super::SlotStats {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

// Layout guards: a change here must be a deliberate change on both sides.
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);
const _: () = assert!(core::mem::size_of::<Conn>() == 88);
const _: () = assert!(core::mem::size_of::<SlotStats>() == 120);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 24);
