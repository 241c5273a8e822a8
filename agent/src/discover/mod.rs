//! Discovery stage: finds every nginx instance on the host (masters, workers,
//! containers), its network namespace and listening sockets. Owned by the
//! discover stage; other stages use only the types below.
//!
//! Entry points: [`Scanner::scan`] (all instances with their listeners, and
//! what was refused) and [`existing_conns`] (connections open on an instance
//! when the agent starts).
//!
//! Everything read from another process is untrusted: a candidate is nginx
//! only if its executable's content says so (`exe`), label values taken from
//! it are bounded (`labels`), instances are capped per network namespace
//! (`admit`), and a process that cannot be read is skipped, not fatal.
mod admit;
mod cgroup;
mod cmdline;
mod config;
mod conns;
mod exe;
#[cfg(test)]
mod fake_proc_tests;
mod labels;
mod listen_diag;
pub mod nginx_conf;
mod proc;
mod scan;
mod sock_diag;
mod tcp_table;
#[cfg(test)]
mod tests;

pub use config::DiscoveryConfig;
pub use conns::existing_conns;
pub use exe::UNKNOWN_VERSION;
pub use labels::{MAX_LABEL_BYTES, log_excerpt};
pub use listen_diag::{ListenDiag, ListenQueue, ListenSocket, NetnsDump, NetnsListenCounters, dump_netns_of};
pub use scan::Scanner;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// Stable identity of an nginx instance: never a pid, so reloads, binary
/// upgrades and respawned workers keep the same identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// Config file the master runs with (`-c`, else the compiled-in default).
    pub conf_path: String,
    /// Container id (64 hex, from /proc/PID/cgroup) when nginx runs in a container.
    pub container_id: Option<String>,
    /// UID of the Kubernetes pod (from the kubelet's cgroup names) when nginx
    /// runs in one; determined by the container, so it never splits an instance.
    pub pod_uid: Option<String>,
    /// Inode of the network namespace (`/proc/PID/ns/net`).
    pub netns: u64,
}

/// A listening socket of an instance, in the instance's own network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
}

/// One running nginx instance, as found by [`scan`]. Masters with the same
/// key are one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub key: InstanceKey,
    /// The master (for `master_process off`, the single nginx process). During
    /// a binary upgrade the old master, whose child the new master is; once
    /// the old one quits, the new one.
    pub master_pid: u32,
    /// Worker processes of all of the instance's masters (old and new during
    /// an upgrade), sorted. Cache manager/loader processes are not included.
    pub worker_pids: Vec<u32>,
    /// Executable as /proc/PID/exe shows it (may end in " (deleted)" after an upgrade).
    pub exe: String,
    /// As `nginx -v` prints it after "nginx version: " (e.g. "nginx/1.22.1",
    /// "openresty/1.25.3.2"), read from the binary; [`UNKNOWN_VERSION`] if absent.
    pub version: String,
    pub listeners: Vec<Listener>,
}

/// What one discovery scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Instances admitted (within the limits), sorted by key.
    pub instances: Vec<Instance>,
    /// Processes and instances that claim to be nginx and were not taken.
    pub refused: Vec<Refusal>,
    /// Processes that could not be examined and were skipped. A tracked
    /// instance whose process is among them should be kept as it was, not
    /// taken for stopped.
    pub errors: Vec<ProcError>,
}

/// Why something that claims to be nginx is not tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// Its executable is not nginx (by content).
    NotNginx,
    /// Its network namespace already has `max_instances_per_netns`
    /// instances, or every instance slot is in use.
    TooManyInstances,
    /// It has more than `max_listeners_per_instance` listening sockets, or
    /// they do not fit in the listener table.
    TooManyListeners,
    /// A label value it would get (config path, executable path, container
    /// id) is too long or has characters no real path has.
    BadLabel,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::NotNginx,
        RefusalReason::TooManyInstances,
        RefusalReason::TooManyListeners,
        RefusalReason::BadLabel,
    ];

    /// Value of the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotNginx => "not_nginx",
            RefusalReason::TooManyInstances => "too_many_instances",
            RefusalReason::TooManyListeners => "too_many_listeners",
            RefusalReason::BadLabel => "bad_label",
        }
    }
}

/// One refused process or instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// What was refused, safe to log (foreign strings escaped and cut):
    /// the same thing refused again on the next scan has the same subject.
    pub subject: String,
    /// Why, safe to log.
    pub detail: String,
}

/// A process that could not be examined.
#[derive(Debug)]
pub struct ProcError {
    pub pid: u32,
    pub error: DiscoverError,
}

/// A TCP connection already open on an instance's listening port, found by
/// sock_diag when the agent starts (so `active` is right after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingConn {
    /// The kernel's socket cookie (same value bpf_get_socket_cookie returns).
    pub cookie: u64,
    pub local_port: u16,
}

/// Why discovery failed. Processes that exit while being scanned are not
/// errors (they are skipped); missing privileges are.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Reading another process's /proc entries (exe, fd, ns) needs
    /// CAP_SYS_PTRACE (ptrace read access) when it runs as another user.
    #[error("permission denied reading {} (inspecting other processes needs CAP_SYS_PTRACE)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// setns(CLONE_NEWNET) into the instance's network namespace failed;
    /// EPERM means the agent lacks CAP_SYS_ADMIN.
    #[error("cannot enter network namespace {netns} of nginx pid {pid}: {source} (setns needs CAP_SYS_ADMIN)")]
    EnterNetns { pid: u32, netns: u64, source: io::Error },
    /// None of the instance's processes is alive in its network namespace any more.
    #[error("nginx instance {conf_path:?} (netns {netns}) has no live process left")]
    InstanceGone { conf_path: String, netns: u64 },
    #[error("sock_diag: {what}: {source}")]
    SockDiag { what: &'static str, source: io::Error },
}

impl DiscoverError {
    /// Every value of [`DiscoverError::kind`].
    pub const KINDS: [&'static str; 6] = ["permission", "fd_limit", "io", "netns", "gone", "sock_diag"];

    /// Short, fixed name of the kind of error, for the `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoverError::PermissionDenied { .. } => "permission",
            DiscoverError::Io { source, .. } if is_fd_limit(source) => "fd_limit",
            DiscoverError::Io { .. } => "io",
            DiscoverError::EnterNetns { .. } => "netns",
            DiscoverError::InstanceGone { .. } => "gone",
            DiscoverError::SockDiag { source, .. } if is_fd_limit(source) => "fd_limit",
            DiscoverError::SockDiag { .. } => "sock_diag",
        }
    }

    /// The agent itself ran out of file descriptors (EMFILE, or ENFILE for
    /// the whole system): not the fault of the process being looked at.
    pub fn is_fd_limit(&self) -> bool {
        self.kind() == "fd_limit"
    }
}

fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
