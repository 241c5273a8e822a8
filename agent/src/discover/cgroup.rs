//! Container id and Kubernetes pod UID from /proc/PID/cgroup.
//!
//! Layouts (kubelet's cgroup naming, pkg/kubelet/cm/cgroup_manager_linux.go;
//! the runtimes' scope names), for cgroup v2 (`0::path`) and v1
//! (`N:controllers:path`) lines alike:
//!
//! | runtime, driver        | path |
//! | ---------------------- | ---- |
//! | containerd, systemd    | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | CRI-O, systemd         | `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope` |
//! | Docker (cri-dockerd), systemd | `/kubepods.slice/kubepods-pod<uid_>.slice/docker-<id>.scope` (Guaranteed QoS: no QoS slice) |
//! | containerd / Docker, cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O, cgroupfs        | `/kubepods/besteffort/pod<uid>/crio-<id>` |
//! | Docker alone           | `/system.slice/docker-<id>.scope`, `/docker/<id>` |
//! | Podman                 | `/machine.slice/libpod-<id>.scope/container` |
//!
//! The systemd driver spells the pod UID with `_` for `-` (a `-` in a slice
//! name means nesting); the API server spells it with `-`.

/// Length of a Docker/containerd/CRI-O container id: 64 lowercase hex.
const CONTAINER_ID_LEN: usize = 64;

/// Paths of the lines of a /proc/PID/cgroup file, the cgroup v2 line
/// (`0::path`) first: on a hybrid host v1 hierarchies may still place the
/// process elsewhere, the unified one is what the runtime manages.
fn paths_v2_first(cgroup: &str) -> impl Iterator<Item = &str> {
    let v2 = cgroup.lines().filter_map(|l| l.strip_prefix("0::"));
    let v1 = cgroup
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .filter_map(|l| l.splitn(3, ':').nth(2));
    v2.chain(v1)
}

/// The container id a process runs in, taken from its cgroup paths, or None
/// when not containerized. Runtimes spell it differently (see the module
/// doc) but always as a run of exactly 64 hex digits, so we look for that run
/// rather than for each layout. The last one on a line is the innermost
/// cgroup, i.e. the container the process is in (not a parent pod sandbox).
pub(super) fn container_id(cgroup: &str) -> Option<String> {
    paths_v2_first(cgroup).find_map(last_hex64)
}

/// The UID of the Kubernetes pod a process runs in (with `-`, as the API
/// server writes `metadata.uid`), or None outside a kubelet-managed cgroup.
pub(super) fn pod_uid(cgroup: &str) -> Option<String> {
    paths_v2_first(cgroup).find_map(pod_uid_in_path)
}

/// The innermost `pod<uid>` component of a path under `kubepods`:
/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_>.slice` (systemd).
fn pod_uid_in_path(path: &str) -> Option<String> {
    let mut in_kubepods = false;
    let mut found = None;
    for comp in path.split('/') {
        if comp == "kubepods" || comp.starts_with("kubepods.") || comp.starts_with("kubepods-") {
            in_kubepods = true;
        }
        if !in_kubepods {
            continue;
        }
        let name = comp.strip_suffix(".slice").unwrap_or(comp);
        // systemd: the last `-`-separated part is the pod's own unit name.
        let last = match comp.ends_with(".slice") {
            true => name.rsplit('-').next().unwrap_or(name),
            false => name,
        };
        if let Some(uid) = last.strip_prefix("pod").map(|u| u.replace('_', "-"))
            && is_uuid(&uid)
        {
            found = Some(uid.to_ascii_lowercase());
        }
    }
    found
}

/// 8-4-4-4-12 hex digits, as Kubernetes generates pod UIDs.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n)
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The last run of exactly 64 hex digits in `path` (longer runs do not count).
fn last_hex64(path: &str) -> Option<String> {
    path.split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|run| run.len() == CONTAINER_ID_LEN)
        .map(|run| run.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const UID: &str = "1234abcd-5678-90ef-1234-567890abcdef";
    const UID_: &str = "1234abcd_5678_90ef_1234_567890abcdef";

    /// (runtime/driver, /proc/PID/cgroup text, pod UID expected).
    fn layouts() -> Vec<(&'static str, String, Option<&'static str>)> {
        vec![
            (
                "containerd, systemd, v2, burstable",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
                ),
                Some(UID),
            ),
            (
                "CRI-O, systemd, v2, besteffort",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n"
                ),
                Some(UID),
            ),
            (
                "CRI-O, systemd, v2, guaranteed (no QoS slice)",
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                Some(UID),
            ),
            (
                "cri-dockerd, systemd, v1",
                format!(
                    "12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope\n\
                     1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope\n\
                     0::/\n"
                ),
                Some(UID),
            ),
            (
                "containerd, cgroupfs, v1",
                format!("4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n3:pids:/kubepods/burstable/pod{UID}/{ID}\n"),
                Some(UID),
            ),
            (
                "containerd, cgroupfs, v2, guaranteed",
                format!("0::/kubepods/pod{UID}/{ID}\n"),
                Some(UID),
            ),
            (
                "CRI-O, cgroupfs, v2",
                format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n"),
                Some(UID),
            ),
            (
                "agent in its own cgroup namespace (paths relative to it)",
                format!("0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                Some(UID),
            ),
            (
                "Docker, systemd, v2",
                format!("0::/system.slice/docker-{ID}.scope\n"),
                None,
            ),
            (
                "Docker, cgroupfs, v1",
                format!("12:memory:/docker/{ID}\n11:cpu:/docker/{ID}\n"),
                None,
            ),
            (
                "Podman",
                format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
                None,
            ),
        ]
    }

    #[test]
    fn runtime_layouts() {
        for (what, cgroup, uid) in layouts() {
            assert_eq!(container_id(&cgroup).as_deref(), Some(ID), "{what}: {cgroup}");
            assert_eq!(pod_uid(&cgroup).as_deref(), uid, "{what}: {cgroup}");
        }
    }

    #[test]
    fn not_containerized() {
        for cg in ["0::/system.slice/nginx.service\n", "0::/\n", ""] {
            assert_eq!(container_id(cg), None, "{cg}");
            assert_eq!(pod_uid(cg), None, "{cg}");
        }
        // A 32-hex id (e.g. a systemd machine id or job id) is not a container.
        assert_eq!(
            container_id("4:memory:/process_api/a6076f8fe3cff901bf5e73e3da04c448\n0::/\n"),
            None
        );
        // 65 hex digits are not an id either.
        assert_eq!(container_id(&format!("0::/x/{ID}a\n")), None);
    }

    #[test]
    fn pod_uid_needs_kubepods_and_a_uuid() {
        // A `pod...` directory outside kubepods is someone else's naming.
        assert_eq!(pod_uid(&format!("0::/user.slice/pod{UID}/{ID}\n")), None);
        // Not a UUID: wrong group lengths, non-hex.
        assert_eq!(pod_uid("0::/kubepods/besteffort/pod1234-5678/x\n"), None);
        assert_eq!(
            pod_uid("0::/kubepods/besteffort/podzzzzabcd-5678-90ef-1234-567890abcdef/x\n"),
            None
        );
        // The pod slice without a container (the pause/sandbox accounting) still names the pod.
        assert_eq!(
            pod_uid(&format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice\n"
            ))
            .as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn v2_line_wins_over_v1() {
        let other = "b".repeat(64);
        let cg = format!("5:pids:/docker/{other}\n0::/kubepods/pod{UID}/{ID}\n");
        assert_eq!(container_id(&cg).as_deref(), Some(ID));
    }

    #[test]
    fn innermost_id_wins() {
        let outer = "a".repeat(64);
        let cg = format!("0::/docker/{outer}/docker/{ID}\n");
        assert_eq!(container_id(&cg).as_deref(), Some(ID));
    }
}
