//! Discovery stage: finds every nginx instance on the host (masters, workers,
//! containers), its network namespace and listening sockets. Owned by the
//! discover stage; other stages use only the types below.
//!
//! Entry points: [`scan`] (all instances with their listeners) and
//! [`existing_conns`] (connections open on an instance when the agent starts).
mod cgroup;
mod cmdline;
mod config;
mod conns;
mod proc;
mod scan;
mod sock_diag;
mod tcp_table;
#[cfg(test)]
mod tests;

pub use config::DiscoveryConfig;
pub use conns::existing_conns;
pub use scan::scan;

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
    pub listeners: Vec<Listener>,
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
    #[error("nginx instance {conf_path} (netns {netns}) has no live process left")]
    InstanceGone { conf_path: String, netns: u64 },
    #[error("sock_diag: {what}: {source}")]
    SockDiag { what: &'static str, source: io::Error },
}
