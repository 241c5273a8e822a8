//! Discovery stage: finds every nginx instance on the host (masters, workers,
//! containers), its network namespace and listening sockets. Owned by the
//! discover stage; other stages use only the types below.
use std::net::IpAddr;

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

/// One running nginx instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub key: InstanceKey,
    pub master_pid: u32,
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
