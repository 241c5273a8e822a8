//! Reads of /proc/PID/* with one error policy: a process that vanished
//! mid-read is `Ok(None)` (skipped), a permission problem is an error naming
//! the path, anything else is an I/O error naming the path.
use super::DiscoverError;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `Ok(None)`: the process (or the fd) is gone.
pub(super) type ProcResult<T> = Result<Option<T>, DiscoverError>;

pub(super) fn classify_err<T>(path: &Path, err: io::Error) -> ProcResult<T> {
    match err.raw_os_error() {
        // ESRCH: the task exited between lookup and read.
        Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(None),
        Some(libc::EACCES) | Some(libc::EPERM) => Err(DiscoverError::PermissionDenied { path: path.to_owned() }),
        _ => Err(DiscoverError::Io {
            path: path.to_owned(),
            source: err,
        }),
    }
}

pub(super) fn lift<T>(path: &Path, r: io::Result<T>) -> ProcResult<T> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => classify_err(path, e),
    }
}

pub(super) fn pid_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

/// Numeric entries of the proc root: every process visible to us.
pub(super) fn list_pids(proc_root: &Path) -> Result<Vec<u32>, DiscoverError> {
    let entries = fs::read_dir(proc_root).map_err(|e| DiscoverError::Io {
        path: proc_root.to_owned(),
        source: e,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

pub(super) fn read_bytes(path: &Path) -> ProcResult<Vec<u8>> {
    lift(path, fs::read(path))
}

pub(super) fn read_text(path: &Path) -> ProcResult<String> {
    Ok(read_bytes(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

pub(super) fn read_link(path: &Path) -> ProcResult<String> {
    Ok(lift(path, fs::read_link(path))?.map(|t| t.to_string_lossy().into_owned()))
}

/// Most bytes of a command line read. Longer ones are cut here (the caller
/// sees `MAX_CMDLINE_BYTES + 1` bytes and knows): a process title can be
/// megabytes, and only its start tells whether it claims to be nginx.
pub(super) const MAX_CMDLINE_BYTES: usize = 64 * 1024;

pub(super) fn cmdline(proc_root: &Path, pid: u32) -> ProcResult<Vec<u8>> {
    let path = pid_dir(proc_root, pid).join("cmdline");
    let Some(file) = open(&path)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    lift(&path, file.take(MAX_CMDLINE_BYTES as u64 + 1).read_to_end(&mut buf))?;
    Ok(Some(buf))
}

pub(super) fn open(path: &Path) -> ProcResult<fs::File> {
    lift(path, fs::File::open(path))
}

/// Metadata of what `path` points to (for /proc/PID/exe: the executable).
pub(super) fn metadata(path: &Path) -> ProcResult<fs::Metadata> {
    lift(path, fs::metadata(path))
}

pub(super) fn exe(proc_root: &Path, pid: u32) -> ProcResult<String> {
    read_link(&pid_dir(proc_root, pid).join("exe"))
}

/// What /proc/PID/stat tells us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub ppid: u32,
    /// Start time in clock ticks after boot: orders processes by age, and
    /// nobody can make a process older than it is.
    pub start_ticks: u64,
}

pub(super) fn stat(proc_root: &Path, pid: u32) -> ProcResult<Stat> {
    let path = pid_dir(proc_root, pid).join("stat");
    let Some(stat) = read_text(&path)? else {
        return Ok(None);
    };
    // An unparsable stat (never seen in practice) is treated like a vanished
    // process rather than failing the whole scan.
    Ok(parse_stat(&stat))
}

/// Parent pid from /proc/PID/stat.
pub(super) fn ppid(proc_root: &Path, pid: u32) -> ProcResult<u32> {
    Ok(stat(proc_root, pid)?.map(|s| s.ppid))
}

/// `pid (comm) state ppid ... starttime ...`: comm may contain spaces and
/// parentheses, so split at the last ')'. starttime is field 22 (proc(5)).
pub(super) fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().take(20).collect();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19).and_then(|f| f.parse().ok()).unwrap_or(0),
    })
}

/// Whether the process runs as root (real and effective uid 0), from
/// /proc/PID/status, as the agent's user namespace sees it. Not the owner of
/// /proc/PID, which a process can make root's by marking itself non-dumpable.
pub(super) fn runs_as_root(proc_root: &Path, pid: u32) -> ProcResult<bool> {
    let path = pid_dir(proc_root, pid).join("status");
    let Some(status) = read_text(&path)? else {
        return Ok(None);
    };
    Ok(Some(parse_status_root(&status)))
}

pub(super) fn parse_status_root(status: &str) -> bool {
    let Some(uids) = status.lines().find_map(|l| l.strip_prefix("Uid:")) else {
        return false;
    };
    let mut ids = uids.split_whitespace();
    ids.next() == Some("0") && ids.next() == Some("0")
}

/// Inode of a network namespace file (`/proc/PID/ns/net` or an open fd's path).
pub(super) fn ns_inode(path: &Path) -> ProcResult<u64> {
    Ok(lift(path, fs::metadata(path))?.map(|m| m.ino()))
}

/// Inodes of the sockets among a process's open file descriptors.
pub(super) fn socket_inodes(proc_root: &Path, pid: u32) -> ProcResult<BTreeSet<u64>> {
    let fd_dir = pid_dir(proc_root, pid).join("fd");
    let Some(entries) = lift(&fd_dir, fs::read_dir(&fd_dir))? else {
        return Ok(None);
    };
    let mut inodes = BTreeSet::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                classify_err::<()>(&fd_dir, e)?;
                return Ok(None);
            }
        };
        // An fd closed since readdir reads as gone: skip just that fd.
        if let Some(target) = read_link(&entry.path())?
            && let Some(inode) = parse_socket_link(&target)
        {
            inodes.insert(inode);
        }
    }
    Ok(Some(inodes))
}

/// "socket:[12345]" → 12345.
pub(super) fn parse_socket_link(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let ppid = |s: &str| parse_stat(s).map(|s| s.ppid);
        assert_eq!(ppid("1234 (nginx) S 1 1234 1234 0 -1"), Some(1));
        assert_eq!(ppid("77 (a) b) (c) R 42 77 77"), Some(42));
        assert_eq!(ppid("77 (x"), None);
        assert_eq!(ppid(""), None);
        let real = "4242 (nginx: master) S 1 4242 4242 0 -1 4194624 53 0 0 0 0 0 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(
            parse_stat(real),
            Some(Stat {
                ppid: 1,
                start_ticks: 987654
            })
        );
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some_and(|s| s.start_ticks > 0), "{own}");
    }

    #[test]
    fn root_from_status() {
        assert!(parse_status_root("Name:\tnginx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"));
        assert!(!parse_status_root("Uid:\t1000\t0\t0\t0\n"));
        assert!(!parse_status_root("Uid:\t0\t1000\t0\t0\n"));
        assert!(!parse_status_root("Name:\tx\n"));
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[98765]"), Some(98765));
        assert_eq!(parse_socket_link("pipe:[98765]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
    }

    #[test]
    fn vanished_process_is_none_not_error() {
        let root = Path::new("/proc");
        // pid_max is at most 2^22, so this pid never exists.
        assert!(matches!(cmdline(root, 99_999_999), Ok(None)));
        assert!(matches!(exe(root, 99_999_999), Ok(None)));
        assert!(matches!(socket_inodes(root, 99_999_999), Ok(None)));
        assert!(matches!(stat(root, 99_999_999), Ok(None)));
        assert!(matches!(runs_as_root(root, 99_999_999), Ok(None)));
    }
}
