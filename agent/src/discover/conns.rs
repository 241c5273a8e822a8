//! `existing_conns`: connections already open on an instance's listening
//! ports, found with sock_diag inside the instance's network namespace.
use super::proc::{self, pid_dir};
use super::sock_diag::{self, DiagSocket};
use super::{DiscoverError, ExistingConn, Instance};
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// ESTABLISHED and CLOSE_WAIT TCP connections whose local port is one of the
/// instance's listening ports, each with its socket cookie. Sorted by cookie.
///
/// Runs the sock_diag dump in the instance's network namespace: directly when
/// the calling thread is already in it, else on a short-lived thread that
/// setns()es into it (needs CAP_SYS_ADMIN), so no other agent thread moves.
pub fn existing_conns(inst: &Instance, proc_root: &Path) -> Result<Vec<ExistingConn>, DiscoverError> {
    let ports: BTreeSet<u16> = inst.listeners.iter().map(|l| l.port).collect();
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let sockets = in_instance_netns(inst, proc_root, sock_diag::dump_established)?;
    Ok(conns_on_ports(sockets, &ports))
}

/// Runs `f` in the instance's network namespace: directly when the calling
/// thread is already in it, else on a short-lived thread that setns()es
/// into it (needs CAP_SYS_ADMIN), so no other agent thread moves.
pub(super) fn in_instance_netns<T: Send + 'static>(
    inst: &Instance,
    proc_root: &Path,
    f: fn() -> Result<T, DiscoverError>,
) -> Result<T, DiscoverError> {
    if own_netns()? == inst.key.netns {
        f()
    } else {
        let (pid, ns_file) = open_instance_netns(inst, proc_root)?;
        run_in_netns(pid, inst.key.netns, ns_file, f)
    }
}

fn conns_on_ports(sockets: Vec<DiagSocket>, ports: &BTreeSet<u16>) -> Vec<ExistingConn> {
    let mut conns: Vec<ExistingConn> = sockets
        .into_iter()
        .filter(|s| ports.contains(&s.local_port))
        .map(|s| ExistingConn {
            cookie: s.cookie,
            local_port: s.local_port,
        })
        .collect();
    conns.sort_by_key(|c| c.cookie);
    conns.dedup_by_key(|c| c.cookie);
    conns
}

/// The network namespace new sockets of the calling thread land in.
fn own_netns() -> Result<u64, DiscoverError> {
    let path = Path::new("/proc/thread-self/ns/net");
    std::fs::metadata(path).map(|m| m.ino()).map_err(|e| DiscoverError::Io {
        path: path.to_owned(),
        source: e,
    })
}

/// Opens the netns file of a live process of the instance: the master, else
/// any worker. The inode is checked after opening, so a pid reused by another
/// process since the scan is never entered.
fn open_instance_netns(inst: &Instance, proc_root: &Path) -> Result<(u32, File), DiscoverError> {
    for pid in std::iter::once(inst.master_pid).chain(inst.worker_pids.iter().copied()) {
        let path = pid_dir(proc_root, pid).join("ns").join("net");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                proc::classify_err::<()>(&path, e)?; // Ok only if the process is gone
                continue;
            }
        };
        let ino = file
            .metadata()
            .map_err(|e| DiscoverError::Io {
                path: path.clone(),
                source: e,
            })?
            .ino();
        if ino == inst.key.netns {
            return Ok((pid, file));
        }
    }
    Err(DiscoverError::InstanceGone {
        conf_path: inst.key.conf_path.clone(),
        netns: inst.key.netns,
    })
}

/// Runs `f` on a dedicated thread moved into the namespace; the thread
/// ends with it, taking the namespace switch with it.
fn run_in_netns<T: Send + 'static>(
    pid: u32,
    netns: u64,
    ns_file: File,
    f: fn() -> Result<T, DiscoverError>,
) -> Result<T, DiscoverError> {
    let worker = std::thread::Builder::new()
        .name("ngxprobe-netns".into())
        .spawn(move || {
            // SAFETY: plain syscall on a valid fd; CLONE_NEWNET only affects
            // the calling thread.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let source = io::Error::last_os_error();
                return Err(DiscoverError::EnterNetns { pid, netns, source });
            }
            f()
        })
        .map_err(|e| DiscoverError::EnterNetns { pid, netns, source: e })?;
    worker.join().unwrap_or_else(|_| {
        Err(DiscoverError::EnterNetns {
            pid,
            netns,
            source: io::Error::other("netns thread panicked"),
        })
    })
}
