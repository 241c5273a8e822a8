//! Checks, before anything is loaded, that this host can run ngxprobe, and
//! says precisely what is missing: kernel version, BTF, capabilities.
//!
//! tracefs and cgroup v2 are reported but not required: the programs attach
//! to BTF tracepoints through BPF links, which need neither.
use std::path::Path;

use caps::Capability;

#[cfg(doc)]
use crate::privilege;

/// Oldest kernel ngxprobe supports: the `sock_recv_length`/`sock_send_length`
/// tracepoints it hooks first appeared in Linux 6.3.
pub const MIN_KERNEL: (u32, u32) = (6, 3);

#[derive(Debug, Default)]
pub struct Preflight {
    /// Problems that stop the agent.
    pub fatal: Vec<String>,
    /// Problems that limit it.
    pub warnings: Vec<String>,
    /// Facts worth a debug line.
    pub notes: Vec<String>,
}

/// When a capability is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Always; CAP_SYS_ADMIN also grants it (the kernel accepts either).
    AlwaysOrSysAdmin,
    Always,
    /// Only when the agent does not run as root (uid 0 owns the /proc/PID/fd
    /// of root's nginx masters; any other uid needs it to list them).
    UnlessRoot,
    /// Optional: without it a feature is missing (the reason says which).
    Optional,
}

/// Every capability the agent uses (exactly [`privilege::used`]), why, and
/// when it is needed. Each is proven by a test that fails without it
/// (tests/tests/privileges.rs, privilege/tests.rs).
const CAPS: [(Capability, Need, &str); 5] = [
    (
        Capability::CAP_BPF,
        Need::AlwaysOrSysAdmin,
        "load eBPF programs and maps",
    ),
    (
        Capability::CAP_PERFMON,
        Need::AlwaysOrSysAdmin,
        "attach the eBPF programs to kernel tracepoints",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        Need::Always,
        "read nginx's /proc/PID/exe, fd and ns entries",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        Need::UnlessRoot,
        "list /proc/PID/fd of nginx masters run by another user, to find their listening sockets",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        Need::Optional,
        "enter containers' network namespaces, to take over connections open before the agent started",
    ),
];

pub fn run() -> Preflight {
    let mut p = Preflight::default();
    check_kernel(&mut p, &read_trim("/proc/sys/kernel/osrelease").unwrap_or_default());
    if !Path::new(crate::probe::BTF_PATH).exists() {
        p.fatal.push(format!(
            "no kernel BTF at {}: ngxprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Ubuntu's kernels have it)",
            crate::probe::BTF_PATH
        ));
    }
    match read_cap_eff() {
        // SAFETY: geteuid has no preconditions.
        Some(eff) => check_caps(&mut p, eff, unsafe { libc::geteuid() } == 0),
        None => p.warnings.push("could not read CapEff from /proc/self/status".into()),
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("tracefs")) {
        p.notes
            .push("tracefs is not mounted: not needed (programs attach via BPF links)".into());
    }
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2")) {
        p.notes
            .push("no cgroup v2 mount: not needed by the current programs".into());
    }
    p
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Parses "6.18.44-fc" → (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel(p: &mut Preflight, release: &str) {
    match parse_kernel_version(release) {
        Some(v) if v < MIN_KERNEL => p.fatal.push(format!(
            "kernel {release} is older than {}.{}, the oldest ngxprobe supports (it hooks the sock_recv_length and sock_send_length tracepoints, added in Linux 6.3)",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        Some(_) => {}
        None => p
            .warnings
            .push(format!("cannot parse the kernel version {release:?}; trying anyway")),
    }
}

fn read_cap_eff() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn check_caps(p: &mut Preflight, eff: u64, root: bool) {
    let has = |c: Capability| eff & c.bitmask() != 0;
    let admin = has(Capability::CAP_SYS_ADMIN);
    let mut required = Vec::new();
    let mut optional = Vec::new();
    for (cap, need, why) in CAPS {
        if has(cap) {
            continue;
        }
        let line = format!("{cap} (to {why})");
        match need {
            Need::AlwaysOrSysAdmin if admin => {}
            Need::AlwaysOrSysAdmin | Need::Always => required.push(line),
            Need::UnlessRoot if !root => required.push(line),
            Need::UnlessRoot | Need::Optional => optional.push(line),
        }
    }
    if !required.is_empty() {
        p.fatal.push(format!(
            "missing capabilities: {}; grant them (see deploy/ and the README's Requirements)",
            required.join(", ")
        ));
    }
    if !optional.is_empty() {
        p.warnings
            .push(format!("missing optional capabilities: {}", optional.join(", ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        let mut p = Preflight::default();
        check_kernel(&mut p, "5.15.0-91-generic");
        assert!(p.fatal[0].contains("older than 6.3"), "{:?}", p.fatal);
        let mut p = Preflight::default();
        check_kernel(&mut p, "6.3.0");
        assert!(p.fatal.is_empty());
    }

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
    }

    #[test]
    fn missing_caps_are_named() {
        let mut p = Preflight::default();
        check_caps(&mut p, mask(&[Capability::CAP_BPF]), true);
        assert_eq!(p.fatal.len(), 1);
        assert!(p.fatal[0].contains("CAP_PERFMON") && p.fatal[0].contains("CAP_SYS_PTRACE"));
        assert!(!p.fatal[0].contains("CAP_BPF ("));
        assert!(p.warnings[0].contains("CAP_SYS_ADMIN") && p.warnings[0].contains("CAP_DAC_READ_SEARCH"));
        let mut p = Preflight::default();
        check_caps(&mut p, u64::MAX, false);
        assert!(p.fatal.is_empty() && p.warnings.is_empty());
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let mut p = Preflight::default();
        check_caps(
            &mut p,
            mask(&[Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE]),
            true,
        );
        assert!(p.fatal.is_empty(), "{:?}", p.fatal);
    }

    #[test]
    fn a_non_root_agent_needs_dac_read_search() {
        let all_but = mask(&[
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_ADMIN,
        ]);
        let mut p = Preflight::default();
        check_caps(&mut p, all_but, false);
        assert!(p.fatal[0].contains("CAP_DAC_READ_SEARCH"), "{:?}", p.fatal);
        let mut p = Preflight::default();
        check_caps(&mut p, all_but, true);
        assert!(p.fatal.is_empty() && p.warnings[0].contains("CAP_DAC_READ_SEARCH"));
    }

    #[test]
    fn the_table_names_exactly_the_capabilities_the_agent_uses() {
        let table: caps::CapsHashSet = CAPS.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(table, crate::privilege::used());
    }
}
