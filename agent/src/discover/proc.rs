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

fn lift<T>(path: &Path, r: io::Result<T>) -> ProcResult<T> {
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

pub(super) fn cmdline(proc_root: &Path, pid: u32) -> ProcResult<Vec<u8>> {
    read_bytes(&pid_dir(proc_root, pid).join("cmdline"))
}

pub(super) fn exe(proc_root: &Path, pid: u32) -> ProcResult<String> {
    read_link(&pid_dir(proc_root, pid).join("exe"))
}

/// Parent pid from /proc/PID/stat.
pub(super) fn ppid(proc_root: &Path, pid: u32) -> ProcResult<u32> {
    let path = pid_dir(proc_root, pid).join("stat");
    let Some(stat) = read_text(&path)? else {
        return Ok(None);
    };
    // An unparsable stat (never seen in practice) is treated like a vanished
    // process rather than failing the whole scan.
    Ok(parse_stat_ppid(&stat))
}

/// `pid (comm) state ppid ...`: comm may contain spaces and parentheses, so
/// split at the last ')'.
pub(super) fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
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

/// Whether the file contains `needle`, reading it in chunks (nginx binaries
/// are megabytes; OpenResty's tens of megabytes).
pub(super) fn file_contains(path: &Path, needle: &[u8]) -> ProcResult<bool> {
    if needle.is_empty() {
        return Ok(Some(true));
    }
    let Some(mut file) = lift(path, fs::File::open(path))? else {
        return Ok(None);
    };
    let keep = needle.len().saturating_sub(1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        let n = match lift(path, file.read(&mut buf[filled..]))? {
            Some(n) => n,
            None => return Ok(None),
        };
        if n == 0 {
            return Ok(Some(false));
        }
        filled += n;
        if buf[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(Some(true));
        }
        // Keep the tail so a needle spanning two reads is still found.
        let tail_start = filled.saturating_sub(keep);
        buf.copy_within(tail_start..filled, 0);
        filled -= tail_start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ppid_with_odd_comm() {
        assert_eq!(parse_stat_ppid("1234 (nginx) S 1 1234 1234 0 -1"), Some(1));
        assert_eq!(parse_stat_ppid("77 (a) b) (c) R 42 77 77"), Some(42));
        assert_eq!(parse_stat_ppid("77 (x"), None);
        assert_eq!(parse_stat_ppid(""), None);
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
    }

    #[test]
    fn file_contains_across_chunk_boundary() {
        let dir = std::env::temp_dir().join(format!("ngxprobe-fc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        let mut data = vec![b'x'; 256 * 1024 - 3];
        data.extend_from_slice(b"nginx version: ");
        data.extend(vec![b'y'; 1000]);
        fs::write(&path, &data).unwrap();
        assert!(matches!(file_contains(&path, b"nginx version: "), Ok(Some(true))));
        assert!(matches!(file_contains(&path, b"openresty"), Ok(Some(false))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
