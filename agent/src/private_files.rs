//! Files only the agent's user may read: the data directory and everything
//! the agent writes there (store blocks, WAL, index, lock, notification
//! log). They hold every metric and alert history of the node; other local
//! users have no business reading them. Directories are created 0700 and
//! files 0600, whatever the umask.
//!
//! A directory that already exists with looser permissions is tightened
//! only when it is evidently the agent's own: owned by the agent's user and
//! empty or holding the agent's marker file (the store's `LOCK`, the
//! notifier's `nflog.json`). Anything else (a `storage.path` pointing at
//! `/var/lib` or `/tmp` by mistake) is left alone with a warning: chmod 700
//! on a shared directory would break every other user of it.
//!
//! A leaf: stages that write files use it, it uses nothing of theirs.
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with mode 0700 for every directory it creates.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// `OpenOptions` whose `create` makes a 0600 file.
pub fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Sets an existing file (e.g. written by an older version) to 0600.
pub fn tighten_file(f: &fs::File) -> io::Result<()> {
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// What [`secure_dir`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DirCheck {
    /// Only the owner has access.
    Private,
    /// Was open to others (the old mode); now 0700.
    Tightened(u32),
    /// Open to others and not evidently ours: left as it is.
    LeftOpen { mode: u32, why: &'static str },
}

/// Creates `dir` (0700) if missing, else tightens it to 0700 when it is the
/// agent's own (see the module doc); `marker` is the file that shows it is.
pub fn secure_dir(dir: &Path, marker: &str) -> io::Result<DirCheck> {
    if !dir.exists() {
        create_dir_all(dir)?;
    }
    let meta = fs::metadata(dir)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(DirCheck::Private);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Ok(DirCheck::LeftOpen {
            mode,
            why: "it belongs to another user",
        });
    }
    let ours = dir.join(marker).exists() || fs::read_dir(dir)?.next().is_none();
    if !ours {
        return Ok(DirCheck::LeftOpen {
            mode,
            why: "it holds files that are not ngxprobe's",
        });
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700 | DIR_MODE))?;
    Ok(DirCheck::Tightened(mode))
}

/// Logs what [`secure_dir`] found (nothing when the directory was private).
pub fn log_dir_check(dir: &Path, check: &io::Result<DirCheck>) {
    match check {
        Ok(DirCheck::Private) => {}
        Ok(DirCheck::Tightened(mode)) => tracing::info!(
            dir = %dir.display(),
            "directory was open to other users (mode {mode:o}); set to 700"
        ),
        Ok(DirCheck::LeftOpen { mode, why }) => tracing::warn!(
            dir = %dir.display(),
            "directory is open to other users (mode {mode:o}) and was left so because {why}; \
             give ngxprobe a directory of its own or chmod 700 it"
        ),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot check the directory's permissions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0)
    }

    #[test]
    fn creates_private_dirs_and_files_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let dir = tmp.path().join("a/b");
        let made = create_dir_all(&dir);
        let file = dir.join("f");
        let written = open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .and_then(|mut f| f.write_all(b"x"));
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        made.expect("mkdir");
        written.expect("write");
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn tightens_only_directories_that_are_evidently_ours() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");

        let missing = tmp.path().join("new");
        assert_eq!(secure_dir(&missing, "LOCK").ok(), Some(DirCheck::Private));
        assert_eq!(mode(&missing), 0o700);

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        set(&empty, 0o755);
        assert_eq!(secure_dir(&empty, "LOCK").ok(), Some(DirCheck::Tightened(0o755)));
        assert_eq!(mode(&empty), 0o700);

        let old_store = tmp.path().join("old");
        fs::create_dir(&old_store).expect("mkdir");
        fs::write(old_store.join("LOCK"), "1\n").expect("write");
        fs::write(old_store.join("blocks.redb"), "").expect("write");
        set(&old_store, 0o775);
        assert_eq!(secure_dir(&old_store, "LOCK").ok(), Some(DirCheck::Tightened(0o775)));
        assert_eq!(mode(&old_store), 0o700);

        // A shared directory given by mistake: not ours, not touched.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::write(shared.join("someone-elses.txt"), "x").expect("write");
        set(&shared, 0o1777);
        let check = secure_dir(&shared, "LOCK").ok();
        assert!(
            matches!(check, Some(DirCheck::LeftOpen { mode: 0o1777, .. })),
            "{check:?}"
        );
        assert_eq!(mode(&shared), 0o1777);

        let file = tmp.path().join("f");
        fs::write(&file, "x").expect("write");
        set(&file, 0o644);
        tighten_file(&fs::File::open(&file).expect("open")).expect("fchmod");
        assert_eq!(mode(&file), 0o600);
    }
}
