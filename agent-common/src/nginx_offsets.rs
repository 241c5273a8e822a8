//! Types shared by the per-request uprobe on nginx's `ngx_http_free_request`
//! (agent-ebpf/src/request_uprobe.rs) and the agent.
//!
//! nginx's structs have no stable ABI: the offsets below are selected in user
//! space per binary (nginx version, architecture, NGX_MODULE_SIGNATURE) and
//! handed to the program through the REQ_OFFSETS map, indexed by the uprobe's
//! attach cookie (one entry per distinct nginx executable).

/// Distinct nginx executables with an attached uprobe.
pub const MAX_NGINX_BINARIES: u32 = 16;

/// nginx's `NGX_HTTP_REQUEST_SIGNATURE` ("HTTP" as a little-endian u32),
/// the first field of every `ngx_http_request_t`.
pub const NGX_HTTP_REQUEST_SIGNATURE: u32 = 0x5054_5448;

/// Bytes of the answering server block's first `server_name` kept in a record.
pub const SERVER_NAME_MAX: usize = 48;

/// `RequestRecord::flags`: the request came over TLS (`r->connection->ssl`).
pub const REQ_FLAG_SSL: u32 = 1;
/// `RequestRecord::flags`: the request is an HTTP/2 stream (`r->stream`).
pub const REQ_FLAG_HTTP2: u32 = 2;
/// `RequestRecord::flags`: made by the socket probes (plaintext HTTP/1.x on
/// an instance without the uprobe), not by the uprobe. `duration_us` is then
/// the kernel's time from the read that started the request to the end of
/// the last send of its response (microseconds: static files take less than
/// nginx's millisecond clock resolves); no server name.
pub const REQ_FLAG_SOCKET: u32 = 4;
/// Socket record whose request line's end was not found in the bytes looked
/// at: `http_version` is VERSION_UNKNOWN (0).
pub const REQ_FLAG_NO_VERSION: u32 = 8;
/// Socket record of a pipelined request (made by nginx from bytes read with
/// the previous one): its request line was not read, method and version are
/// unknown and its bytes received count in the previous request.
pub const REQ_FLAG_NO_LINE: u32 = 16;

/// Byte offsets into nginx's structs for one nginx build. All are offsets
/// from the start of the named struct; `cached_time_from_fn` is the distance
/// from `ngx_http_free_request` to the exported global `ngx_cached_time`
/// (a `ngx_time_t *`) in the executable's virtual addresses, so the program
/// finds the global from the probed instruction's address without knowing
/// where the process was loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NginxOffsets {
    pub cached_time_from_fn: i64,
    /// Distance from `ngx_http_free_request` to the exported module
    /// `ngx_http_core_module` (its first field, `ctx_index`, indexes srv_conf).
    pub core_module_from_fn: i64,
    /// ngx_http_request_t
    pub req_connection: u32,
    pub req_pool: u32,
    pub req_status: u32,
    pub req_err_status: u32,
    pub req_method: u32,
    pub req_http_version: u32,
    pub req_request_length: u32,
    pub req_start_sec: u32,
    pub req_start_msec: u32,
    pub req_stream: u32,
    /// `header_size`: bytes of the response header nginx sent.
    pub req_header_size: u32,
    /// Byte holding the `logged` bit, and the bit's mask in it.
    pub req_logged_byte: u32,
    pub req_logged_mask: u32,
    /// ngx_connection_t
    pub conn_sent: u32,
    pub conn_ssl: u32,
    pub conn_local_sockaddr: u32,
    /// ngx_time_t
    pub time_sec: u32,
    pub time_msec: u32,
    /// Non-zero once user space filled the entry in.
    pub valid: u32,
    /// `r->srv_conf` (void **), and `server_name` (ngx_str_t) in
    /// ngx_http_core_srv_conf_t.
    pub req_srv_conf: u32,
    pub cscf_server_name: u32,
    /// Non-zero: copy the server block's name into each record.
    pub want_server_name: u32,
    /// Bytes of ngx_http_request_t and ngx_connection_t the uprobe reads in
    /// one go (up to the end of the furthest field it uses; at most
    /// REQ_SPAN_MAX and CONN_SPAN_MAX, exclusive): one user-memory read each instead of
    /// one per field, which on a VM cost ~100 ns apiece. Set by [`Self::with_spans`].
    pub req_span: u32,
    pub conn_span: u32,
}

/// Bytes of the request struct the uprobe reads are fewer than this (nginx
/// 1.22's fields it uses end near 1,310; a power of two for the verifier).
pub const REQ_SPAN_MAX: u32 = 2048;
/// Bytes of the connection struct the uprobe reads are fewer than this.
pub const CONN_SPAN_MAX: u32 = 512;

impl NginxOffsets {
    /// The offsets with `req_span` and `conn_span` covering every field the
    /// uprobe reads (8-byte fields, the one-byte `logged` flags), or None if
    /// they reach REQ_SPAN_MAX / CONN_SPAN_MAX or an 8-byte field is not
    /// 8-byte aligned (not nginx's layout on a 64-bit target; the uprobe
    /// loads each as one aligned word of its copy).
    pub fn with_spans(mut self) -> Option<Self> {
        let words = [
            self.req_connection,
            self.req_pool,
            self.req_status,
            self.req_err_status,
            self.req_method,
            self.req_http_version,
            self.req_request_length,
            self.req_start_sec,
            self.req_start_msec,
            self.req_stream,
            self.req_header_size,
            self.req_srv_conf,
        ];
        let conn_words = [self.conn_sent, self.conn_ssl, self.conn_local_sockaddr];
        if words.iter().chain(&conn_words).any(|o| o % 8 != 0) {
            return None;
        }
        let req = words
            .iter()
            .map(|o| o.saturating_add(8))
            .chain([self.req_logged_byte.saturating_add(1), 8])
            .max()?;
        let conn = conn_words.iter().map(|o| o.saturating_add(8)).max()?;
        if req >= REQ_SPAN_MAX || conn >= CONN_SPAN_MAX {
            return None;
        }
        self.req_span = req;
        self.conn_span = conn;
        Some(self)
    }
}

/// One request nginx finished, as the uprobe saw it at `ngx_http_free_request`
/// (after the status is final, just before nginx writes its access log line).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Process (tgid) of the nginx worker that served it.
    pub tgid: u32,
    /// The status nginx logs as `$status` (err_status, else headers_out.status).
    pub status: u32,
    /// nginx's method bit (`NGX_HTTP_GET` = 2, ...; 1 = unknown method).
    pub method: u32,
    /// nginx's `http_version`: 9 (HTTP/0.9), 1000, 1001, 2000.
    pub http_version: u32,
    /// REQ_FLAG_* bits.
    pub flags: u32,
    /// Local port of the connection, host order (0 if not an inet socket).
    pub port: u16,
    pub _pad: u16,
    /// Microseconds: from the uprobe, `$request_time` (nginx's cached clock
    /// minus the start, whole milliseconds × 1000); from the socket probes,
    /// see REQ_FLAG_SOCKET.
    pub duration_us: u64,
    /// `$request_length`: request line, headers and body bytes received.
    pub request_length: u64,
    /// `$bytes_sent`: bytes sent to the client (headers and body).
    pub bytes_sent: u64,
    /// `$body_bytes_sent`: `bytes_sent` minus the response header.
    pub body_bytes_sent: u64,
    /// Length of the server block's first `server_name` (0: not read); the
    /// first SERVER_NAME_MAX bytes are in `server_name`.
    pub server_name_len: u32,
    /// The worker's parent (the master) when the record was made, 0 if not
    /// read: attributes a worker the agent's scans have not listed (started
    /// and gone between two scans) or no longer list (exited since).
    pub ppid: u32,
    pub server_name: [u8; SERVER_NAME_MAX],
}

impl Default for RequestRecord {
    fn default() -> Self {
        RequestRecord {
            tgid: 0,
            status: 0,
            method: 0,
            http_version: 0,
            flags: 0,
            port: 0,
            _pad: 0,
            duration_us: 0,
            request_length: 0,
            bytes_sent: 0,
            body_bytes_sent: 0,
            server_name_len: 0,
            ppid: 0,
            server_name: [0; SERVER_NAME_MAX],
        }
    }
}

/// Per-CPU counters of one attached binary (REQ_STATS, indexed like REQ_OFFSETS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestProbeStats {
    /// Records written to the ring buffer.
    pub records: u64,
    /// Requests lost because the ring buffer was full.
    pub ring_full: u64,
    /// Calls whose request did not carry nginx's "HTTP" signature at the
    /// configured offset: the offsets do not fit this binary.
    pub signature_mismatch: u64,
    /// Calls for a request nginx does not log here (already logged or a
    /// fake request nginx makes internally, e.g. for ssl_certificate).
    pub not_logged: u64,
    /// Calls whose nginx memory could not be read.
    pub read_errors: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are #[repr(C)], Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::NginxOffsets {}
    unsafe impl aya::Pod for super::RequestRecord {}
    unsafe impl aya::Pod for super::RequestProbeStats {}
}

const _: () = assert!(core::mem::size_of::<NginxOffsets>() == 112);
const _: () = assert!(core::mem::size_of::<RequestRecord>() == 112);
const _: () = assert!(core::mem::size_of::<RequestProbeStats>() == 40);
