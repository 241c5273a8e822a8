//! Container id from /proc/PID/cgroup.

/// Length of a Docker/containerd/CRI-O container id: 64 lowercase hex.
const CONTAINER_ID_LEN: usize = 64;

/// The container id a process runs in, taken from its cgroup paths, or None
/// when not containerized. Runtimes spell it differently —
/// `/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `/kubepods/burstable/pod<uid>/<id>`, `libpod-<id>.scope` —
/// but always as a run of exactly 64 hex digits, so we look for that run
/// rather than for each layout. The last one on a line is the innermost
/// cgroup, i.e. the container the process is in (not a parent pod sandbox).
pub(super) fn container_id(cgroup: &str) -> Option<String> {
    // Lines are "hierarchy-id:controllers:path"; prefer the cgroup v2 line
    // ("0::path"), else the first v1 line carrying an id.
    let paths = cgroup.lines().filter_map(|l| l.splitn(3, ':').nth(2));
    let v2 = cgroup
        .lines()
        .find(|l| l.starts_with("0::"))
        .and_then(|l| last_hex64(&l[3..]));
    v2.or_else(|| paths.filter_map(last_hex64).next())
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

    #[test]
    fn runtime_layouts() {
        for cgroup in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:memory:/docker/{ID}\n11:cpu:/docker/{ID}\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_5678_90ef_1234_567890abcdef.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/crio-{ID}.scope"),
            format!("4:cpu:/kubepods/burstable/pod1234abcd-5678-90ef-1234-567890abcdef/{ID}\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
        ] {
            assert_eq!(container_id(&cgroup).as_deref(), Some(ID), "{cgroup}");
        }
    }

    #[test]
    fn not_containerized() {
        assert_eq!(container_id("0::/system.slice/nginx.service\n"), None);
        assert_eq!(container_id("0::/\n"), None);
        assert_eq!(container_id(""), None);
        // A 32-hex id (e.g. a systemd machine id or job id) is not a container.
        assert_eq!(
            container_id("4:memory:/process_api/a6076f8fe3cff901bf5e73e3da04c448\n0::/\n"),
            None
        );
        // 65 hex digits are not an id either.
        assert_eq!(container_id(&format!("0::/x/{ID}a\n")), None);
    }

    #[test]
    fn innermost_id_wins() {
        let outer = "a".repeat(64);
        let cg = format!("0::/docker/{outer}/docker/{ID}\n");
        assert_eq!(container_id(&cg).as_deref(), Some(ID));
    }
}
