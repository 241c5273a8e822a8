//! Per-thread capabilities against the real kernel: what a thread without
//! capabilities can still do (use the BPF maps and programs through their
//! file descriptors) and what each capability the agent keeps is needed for
//! (each test fails without it). Needs root; without it the tests are skipped
//! (a failure under CI).
use super::*;
use crate::discover;
use crate::probe::{Probe, ProbeError};
use ngxprobe_e2e::util::skip_or_fail;
use ngxprobe_e2e::{Nginx, NginxOptions};

/// One line of /proc/thread-self/status as a capability mask.
fn thread_caps(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("read /proc/thread-self/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/thread-self/status"));
    u64::from_str_radix(line.trim(), 16).expect("hex capability mask")
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Whether this test process holds every capability the agent uses.
fn privileged() -> bool {
    let ok = thread_caps("CapEff") & mask(&used()) == mask(&used());
    if !ok {
        skip_or_fail("these tests need root (every capability the agent uses)");
    }
    ok
}

/// Runs `f` on a new thread that holds only `keep` (∩ what this one holds).
fn on_thread_with<T: Send>(keep: &[Capability], f: impl FnOnce() -> T + Send) -> T {
    let keep: CapsHashSet = keep.iter().copied().collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let held = caps::read(None, CapSet::Permitted).expect("read permitted");
            let target: CapsHashSet = held.intersection(&keep).copied().collect();
            keep_only(&target).expect("narrow the test thread's capabilities");
            assert_eq!(thread_caps("CapEff"), mask(&target));
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}

fn without(drop: &[Capability]) -> Vec<Capability> {
    used().into_iter().filter(|c| !drop.contains(c)).collect()
}

/// The probes, or None when the binary was built without the eBPF object
/// (AYA_BUILD_SKIP=1: skipped, a failure under CI).
fn load_probe() -> Option<Probe> {
    match Probe::load(1024) {
        Ok(p) => Some(p),
        Err(ProbeError::NoObject) => {
            skip_or_fail("built without the eBPF object (AYA_BUILD_SKIP=1)");
            None
        }
        Err(e) => panic!("loading the probes as root: {e}"),
    }
}

#[test]
fn a_thread_drops_every_capability_and_the_others_keep_theirs() {
    if !privileged() {
        return;
    }
    let before = thread_caps("CapEff");
    let after = std::thread::scope(|s| {
        s.spawn(|| {
            drop_all_for_this_thread();
            ["CapEff", "CapPrm", "CapInh", "CapAmb"].map(thread_caps)
        })
        .join()
        .expect("thread")
    });
    assert_eq!(after, [0; 4], "CapEff, CapPrm, CapInh, CapAmb after the drop");
    assert_eq!(thread_caps("CapEff"), before, "the calling thread is untouched");
    // An empty permitted set cannot be raised again.
    let regained = std::thread::scope(|s| {
        s.spawn(|| {
            drop_all_for_this_thread();
            caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_ok()
        })
        .join()
        .expect("thread")
    });
    assert!(!regained, "a thread regained CAP_SYS_ADMIN after dropping everything");
}

#[test]
fn bpf_maps_and_program_stats_work_through_fds_without_capabilities() {
    if !privileged() {
        return;
    }
    let Some(mut probe) = load_probe() else { return };
    let programs = probe.programs_loaded();
    let (totals, stats, reset, listeners) = on_thread_with(&[], || {
        assert_eq!(thread_caps("CapEff"), 0);
        let totals = probe.global_totals().map_err(|e| e.to_string());
        let stats = probe.program_stats().len();
        let reset = probe.reset_slot(0).map_err(|e| e.to_string());
        let listeners = probe
            .set_listeners(&std::collections::BTreeMap::new())
            .map_err(|e| e.to_string());
        (totals, stats, reset, listeners)
    });
    assert!(totals.is_ok(), "reading STATS without capabilities: {totals:?}");
    assert_eq!(stats, programs, "program info (run time/count) without capabilities");
    assert!(reset.is_ok(), "updating STATS without capabilities: {reset:?}");
    assert!(
        listeners.is_ok(),
        "updating LISTENERS without capabilities: {listeners:?}"
    );
}

#[test]
fn loading_the_probes_needs_cap_bpf_and_cap_perfmon() {
    if !privileged() {
        return;
    }
    // Make sure the object exists before reading failures as "no capability".
    if load_probe().is_none() {
        return;
    }
    // CAP_SYS_ADMIN would stand in for either, so it goes too.
    let no_bpf = on_thread_with(&without(&[Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]), || {
        Probe::load(1024).err().map(|e| e.to_string())
    });
    assert!(no_bpf.is_some(), "the probes loaded without CAP_BPF and CAP_SYS_ADMIN");
    let no_perfmon = on_thread_with(&without(&[Capability::CAP_PERFMON, Capability::CAP_SYS_ADMIN]), || {
        Probe::load(1024).err().map(|e| e.to_string())
    });
    assert!(
        no_perfmon.is_some(),
        "the probes loaded without CAP_PERFMON and CAP_SYS_ADMIN"
    );
    let with_load_caps = on_thread_with(&LOAD, || Probe::load(1024).err().map(|e| e.to_string()));
    assert_eq!(with_load_caps, None, "CAP_BPF + CAP_PERFMON alone must be enough");
    eprintln!("without CAP_BPF: {no_bpf:?}\nwithout CAP_PERFMON: {no_perfmon:?}");
}

/// Whether a scan on a thread holding `keep` finds `conf` with its listeners.
fn scan_finds(keep: &[Capability], conf: &str) -> bool {
    on_thread_with(keep, || {
        discover::Scanner::new(&discover::DiscoveryConfig::default())
            .scan()
            .map(|found| {
                found
                    .instances
                    .iter()
                    .any(|i| i.key.conf_path == conf && !i.listeners.is_empty())
            })
            .unwrap_or(false)
    })
}

#[test]
fn discovery_of_roots_nginx_needs_cap_sys_ptrace_only() {
    if !privileged() {
        return;
    }
    let nginx = Nginx::start(NginxOptions {
        tag: "priv-ptrace".into(),
        big_file: false,
        ..Default::default()
    })
    .expect("start nginx");
    let conf = nginx.conf_label();
    assert!(scan_finds(&DISCOVERY, &conf), "not found with DISCOVERY's capabilities");
    assert!(
        !scan_finds(&without(&[Capability::CAP_SYS_PTRACE]), &conf),
        "root's nginx was inspected without CAP_SYS_PTRACE"
    );
    // uid 0 owns root's /proc/PID/fd: CAP_DAC_READ_SEARCH is not needed here.
    assert!(scan_finds(&[Capability::CAP_SYS_PTRACE], &conf));
}

#[test]
fn another_users_nginx_needs_cap_dac_read_search() {
    if !privileged() {
        return;
    }
    // nobody:nogroup on Debian.
    let nginx = Nginx::start(NginxOptions {
        tag: "priv-nobody".into(),
        big_file: false,
        user: Some((65534, 65534)),
        ..Default::default()
    })
    .expect("start nginx as nobody");
    let conf = nginx.conf_label();
    assert!(scan_finds(&DISCOVERY, &conf), "not found with DISCOVERY's capabilities");
    assert!(
        !scan_finds(&without(&[Capability::CAP_DAC_READ_SEARCH]), &conf),
        "the listeners of another user's nginx were found without CAP_DAC_READ_SEARCH"
    );
}
