//! Checks, before anything is loaded, that this host can run ngxprobe, and
//! says precisely what is missing: kernel version, BTF, capabilities.
//!
//! tracefs and cgroup v2 are reported but not required: the programs attach
//! to BTF tracepoints through BPF links, which need neither.
use std::path::Path;

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

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAPS: [(u32, &str, bool, &str); 6] = [
    (39, "CAP_BPF", true, "load eBPF programs and maps"),
    (
        38,
        "CAP_PERFMON",
        true,
        "attach tracing programs and read kernel memory",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        true,
        "read other processes' /proc/PID/exe, fd and ns entries",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        false,
        "enter containers' network namespaces to find connections open before the agent started",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        false,
        "query socket diagnostics in other network namespaces",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        false,
        "read /proc entries of processes of other users",
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
        Some(eff) => check_caps(&mut p, eff),
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

fn check_caps(p: &mut Preflight, eff: u64) {
    let missing = |required: bool| -> Vec<String> {
        CAPS.iter()
            .filter(|(bit, _, req, _)| *req == required && eff & (1u64 << bit) == 0)
            .map(|(_, name, _, why)| format!("{name} (to {why})"))
            .collect()
    };
    let req = missing(true);
    if !req.is_empty() {
        let euid = unsafe { libc::geteuid() };
        p.fatal.push(format!(
            "missing capabilities: {}{}",
            req.join(", "),
            if euid != 0 {
                "; run as root or grant them (see deploy/)"
            } else {
                ""
            }
        ));
    }
    let opt = missing(false);
    if !opt.is_empty() {
        p.warnings
            .push(format!("missing optional capabilities: {}", opt.join(", ")));
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

    #[test]
    fn missing_caps_are_named() {
        let mut p = Preflight::default();
        // Only CAP_BPF present.
        check_caps(&mut p, 1 << 39);
        assert_eq!(p.fatal.len(), 1);
        assert!(p.fatal[0].contains("CAP_PERFMON") && p.fatal[0].contains("CAP_SYS_PTRACE"));
        assert!(!p.fatal[0].contains("CAP_BPF ("));
        let mut p = Preflight::default();
        check_caps(&mut p, u64::MAX);
        assert!(p.fatal.is_empty() && p.warnings.is_empty());
    }
}
