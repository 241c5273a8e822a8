//! Reading an instance's config files as nginx sees them: every path is
//! resolved inside the instance's root (/proc/<master>/root), absolute
//! symlinks included (openat2 RESOLVE_IN_ROOT: a container's
//! /etc/nginx/sites-enabled/x -> /etc/nginx/sites-available/x must not
//! lead to the host's file), with bounded reads.
use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// The root directory of an instance, opened once per read.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(dir: &Path) -> io::Result<Root> {
        let f = File::open(dir)?;
        Ok(Root { fd: f.into() })
    }

    /// Opens `path` (absolute, as the instance sees it) inside the root.
    fn open_in(&self, path: &str, dir: bool) -> io::Result<File> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let c = CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        if dir {
            flags |= libc::O_DIRECTORY;
        }
        // SAFETY: open_how is plain data; zeroed is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid dirfd, NUL-terminated path and open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor we own.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }

    /// Reads a regular file, refusing more than `limit` bytes (Ok(None)).
    pub fn read(&self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let f = self.open_in(path, false)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf)?;
        Ok((buf.len() as u64 <= limit).then_some(buf))
    }

    /// Names in a directory, sorted (glob(3), which nginx uses, sorts).
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let f = self.open_in(dir, true)?;
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", f.as_raw_fd()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The paths a pattern matches, like glob(3) (what nginx's `include`
    /// uses when the path has `*`, `?` or `[`): wildcards in any component,
    /// no match for names starting with `.` unless the pattern's does, and
    /// no match is not an error. At most `max` paths (more: Err).
    pub fn glob(&self, pattern: &str, max: usize) -> io::Result<Vec<String>> {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let mut found = vec![String::new()];
        for comp in pattern.split('/').filter(|c| !c.is_empty()) {
            let mut next = Vec::new();
            if !comp.contains(['*', '?', '[']) {
                for p in found {
                    next.push(format!("{p}/{comp}"));
                }
            } else {
                let pat = glob::Pattern::new(comp).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.msg))?;
                for p in &found {
                    let dir = if p.is_empty() { "/" } else { p.as_str() };
                    // A directory that does not exist matches nothing.
                    let names = match self.list(dir) {
                        Ok(n) => n,
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => continue,
                        Err(e) => return Err(e),
                    };
                    for n in names {
                        if pat.matches_with(&n, opts) {
                            next.push(format!("{p}/{n}"));
                        }
                    }
                }
            }
            if next.len() > max {
                return Err(io::Error::other(format!("matches more than {max} paths")));
            }
            found = next;
        }
        // Only the last step's matches must exist: a literal last component
        // after a wildcard directory is kept only if it is there.
        Ok(found
            .into_iter()
            .filter(|p| !p.is_empty() && self.open_in(p, false).is_ok())
            .collect())
    }
}
