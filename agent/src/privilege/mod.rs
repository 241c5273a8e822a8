//! Least privilege inside the agent: which capabilities each thread holds.
//!
//! The agent needs capabilities for two jobs only:
//! * loading and attaching the eBPF programs ([`LOAD`]), once, on the main
//!   thread at start;
//! * inspecting other processes' `/proc` entries and entering their network
//!   namespaces ([`DISCOVERY`]), on the discovery thread for its whole life.
//!
//! Everything else — the HTTP server, PromQL, rules, notifications, the
//! store, the sampler — parses network input or files the agent owns and
//! needs no capability: the BPF maps and programs are used through file
//! descriptors opened at load time, and the kernel checks those when they are
//! opened, not when they are read or updated. Linux capabilities belong to
//! threads, not processes, so those threads run with empty capability sets
//! (effective, permitted, inheritable, ambient): a logic bug in a parser can
//! then not use the agent's privileges, and cannot take them back either (an
//! empty permitted set cannot be raised again).
//!
//! What this does not protect against: memory corruption. All threads share
//! one address space, so code that can write arbitrary memory can steer the
//! discovery thread. Rust's memory safety makes logic bugs the realistic
//! threat; a separate unprivileged process would also cover the rest, at the
//! price of a second process and a protocol between them. The uid is not
//! changed here either: run the agent as a non-root user with these
//! capabilities (deploy/) so that a thread without capabilities is also an
//! ordinary user for file permissions and signals.
//!
//! New threads inherit the capabilities of the thread that creates them. The
//! supervisor therefore narrows the main thread step by step:
//! [`restrict_process`] (bounding set, no_new_privs, nothing beyond [`used`]),
//! [`probes_loaded`] (main keeps [`DISCOVERY`] and starts discovery), then
//! [`drop_all_for_this_thread`] before any other stage starts; the async
//! runtime's threads drop theirs when they start.
use std::sync::atomic::{AtomicU64, Ordering};

use caps::{CapSet, Capability, CapsHashSet};
use tracing::{debug, error, info};

use crate::metrics::{Family, MetricType};

/// Load and attach the eBPF programs (maps, BTF tracepoint programs).
/// CAP_SYS_ADMIN implies both for bpf(2); they are listed so that an agent
/// without CAP_SYS_ADMIN still works.
pub const LOAD: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_PERFMON];

/// Read other processes' /proc/PID/{exe,fd,ns} (CAP_SYS_PTRACE), list the
/// /proc/PID/fd of processes of other users (CAP_DAC_READ_SEARCH), enter
/// their network namespaces for the sock_diag dump (CAP_SYS_ADMIN).
pub const DISCOVERY: [Capability; 3] = [
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_SYS_ADMIN,
];

/// Every capability the agent ever uses: [`LOAD`] and [`DISCOVERY`].
pub fn used() -> CapsHashSet {
    LOAD.iter().chain(DISCOVERY.iter()).copied().collect()
}

/// Threads that could not drop their capabilities (see [`families`]).
static DROP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// What [`restrict_process`] left the process with.
#[derive(Debug)]
pub struct Restricted {
    /// Capabilities the main thread holds now (⊆ [`used`]).
    pub kept: CapsHashSet,
    /// Whether the bounding set could be narrowed (needs CAP_SETPCAP; a
    /// container runtime or systemd has usually done it already).
    pub bounding_narrowed: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PrivilegeError {
    what: &'static str,
    source: caps::errors::CapsError,
}

fn err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError { what, source }
}

/// Once, on the main thread, before any other thread exists (threads inherit
/// all of this): sets no_new_privs, removes every capability outside [`used`]
/// from the bounding set (when allowed to), and keeps only [`used`] ∩ the
/// permitted set, raised to effective (a binary with file capabilities
/// `+p` starts with an empty effective set).
pub fn restrict_process() -> Result<Restricted, PrivilegeError> {
    set_no_new_privs()?;
    let used = used();
    let mut bounding_narrowed = false;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(err("reading capabilities"))? {
        for cap in caps::all().difference(&used) {
            // A capability this kernel does not know is not in the set anyway.
            if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, *cap).map_err(err("narrowing the bounding set"))?;
            }
        }
        bounding_narrowed = true;
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("reading the permitted set"))?;
    let kept: CapsHashSet = permitted.intersection(&used).copied().collect();
    keep_only(&kept).map_err(err("narrowing the process's capabilities"))?;
    info!(
        kept = %names(&kept),
        bounding_narrowed,
        "capabilities narrowed to what the agent uses; no_new_privs set"
    );
    Ok(Restricted {
        kept,
        bounding_narrowed,
    })
}

/// After the eBPF programs are loaded: the main thread keeps only
/// [`DISCOVERY`], which the discovery thread it starts next inherits.
pub fn probes_loaded() {
    let discovery: CapsHashSet = DISCOVERY.iter().copied().collect();
    narrow_this_thread(&discovery, "main (after loading the probes)");
}

/// Drops every capability of the calling thread, for good. For threads that
/// serve HTTP, evaluate queries and rules, sample, or deliver notifications.
/// A failure (only a seccomp profile denying capset(2) could cause one) is
/// logged and counted, never fatal.
pub fn drop_all_for_this_thread() {
    narrow_this_thread(&CapsHashSet::new(), "");
}

fn narrow_this_thread(to: &CapsHashSet, label: &str) {
    let held = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let target: CapsHashSet = held.intersection(to).copied().collect();
    let thread = std::thread::current();
    let name = match label {
        "" => thread.name().unwrap_or("unnamed"),
        l => l,
    };
    match keep_only(&target) {
        Ok(()) => debug!(thread = name, kept = %names(&target), "thread capabilities narrowed"),
        Err(e) => {
            DROP_FAILURES.fetch_add(1, Ordering::Relaxed);
            error!(thread = name, "cannot drop this thread's capabilities: {e}");
        }
    }
}

/// Makes `keep` (⊆ permitted) the calling thread's effective and permitted
/// sets; empties its inheritable and ambient sets.
fn keep_only(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, keep)?;
    caps::set(None, CapSet::Permitted, keep)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Ambient)
}

fn set_no_new_privs() -> Result<(), PrivilegeError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(PrivilegeError {
            what: "prctl(PR_SET_NO_NEW_PRIVS)",
            source: std::io::Error::last_os_error().to_string().into(),
        });
    }
    Ok(())
}

/// "CAP_BPF,CAP_PERFMON" in a stable order; "none" for the empty set.
pub fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    v.join(",")
}

/// `ngxprobe_privilege_drop_failures_total`.
pub fn families() -> Vec<Family> {
    let mut f = Family::new(
        "ngxprobe_privilege_drop_failures_total",
        "Threads that could not drop their capabilities (they kept them; see the log).",
        MetricType::Counter,
    );
    f.push(&[], DROP_FAILURES.load(Ordering::Relaxed) as f64);
    vec![f]
}

#[cfg(test)]
mod tests;
