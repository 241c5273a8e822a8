//! Is this executable nginx? Decided from the file's content, not its name.
//!
//! nginx links with `-Wl,-E` (since 1.9.11, for dynamic modules), so its
//! functions and globals stay in `.dynsym` even in a stripped binary. A binary
//! counts as nginx when it is an ELF file defining all of [`NGINX_SYMBOLS`] —
//! core symbols every nginx build has, whatever modules it was configured
//! with. Forks that keep nginx's core (OpenResty, Angie, Tengine) pass; so
//! would a binary someone built to carry these symbols, which is why the
//! other defences (label bounds, per-namespace caps) do not rely on this one.
//! An nginx built without `-E` and stripped fails and is reported as refused.
//!
//! Reads are bounded: the ELF and section headers, the symbol and string
//! tables (each capped) and a streamed search of `.rodata` for the version.
//! Verdicts are cached per file identity, so each binary is examined once
//! however many processes run it and however often discovery scans.
use super::proc::{self, ProcResult};
use object::elf::{FileHeader32, FileHeader64, SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::read::{FileKind, ReadCache, StringTable};
use object::{Endianness, SectionIndex};
use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Defined in every nginx since 1.9.11 (ngx_cycle.c, ngx_process_cycle.c,
/// the generated ngx_modules.c): the core, not any optional module.
const NGINX_SYMBOLS: [&[u8]; 6] = [
    b"ngx_cycle",
    b"ngx_init_cycle",
    b"ngx_master_process_cycle",
    b"ngx_single_process_cycle",
    b"ngx_modules",
    b"ngx_module_names",
];

/// What `nginx -v` prints before the version (OpenResty's binary too).
const VERSION_MARKER: &[u8] = b"nginx version: ";
/// Version value when the binary does not say (or says something odd).
pub const UNKNOWN_VERSION: &str = "unknown";
/// Longest version accepted as a label value ("nginx/1.27.3", "openresty/1.25.3.2").
const MAX_VERSION_LEN: usize = 48;

/// Larger files are not examined (OpenResty with LuaJIT is ~30 MB).
const MAX_EXE_BYTES: u64 = 1 << 30;
/// An ELF with more section headers than this is not a real nginx (~30).
const MAX_SECTIONS: usize = 4096;
/// Caps on one symbol or string table read into memory (Debian's nginx:
/// 27 KB of .dynsym, 22 KB of .dynstr; unstripped OpenResty: a few MB).
const MAX_TABLE_BYTES: u64 = 16 << 20;
/// Most bytes of `.rodata` searched for the version string.
const MAX_RODATA_SCAN: u64 = 64 << 20;
/// Chunk of the streamed search.
const SCAN_CHUNK: usize = 256 * 1024;

/// What an executable is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// nginx (or a fork), with its version as `nginx -v` prints it after
    /// "nginx version: ", e.g. "nginx/1.22.1"; [`UNKNOWN_VERSION`] if absent.
    Nginx { version: String },
    /// Not nginx; why, for the log.
    NotNginx { why: &'static str },
}

/// Identity of a file's content: a rewrite changes size, mtime or (even if
/// those are set back with utimensat) ctime; a replacement changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Verdicts per file, kept while some process still runs the file.
#[derive(Debug, Default)]
pub(super) struct ExeCache {
    verdicts: HashMap<FileId, Verdict>,
    used: HashSet<FileId>,
    /// Files actually opened and examined (for tests and the log).
    pub examined: u64,
}

impl ExeCache {
    /// The verdict on the executable at `path` (normally /proc/PID/exe).
    /// `Ok(None)`: the process is gone.
    pub fn verdict(&mut self, path: &Path) -> ProcResult<Verdict> {
        let Some(meta) = proc::metadata(path)? else {
            return Ok(None);
        };
        let id = FileId::of(&meta);
        if let Some(v) = self.verdicts.get(&id) {
            self.used.insert(id);
            return Ok(Some(v.clone()));
        }
        let Some(file) = proc::open(path)? else {
            return Ok(None);
        };
        // The file may have been replaced between stat and open: key the
        // verdict by what was actually read.
        let Some(meta) = proc::lift(path, file.metadata())? else {
            return Ok(None);
        };
        let id = FileId::of(&meta);
        let verdict = if meta.is_file() {
            examine(&file, meta.len())
        } else {
            Verdict::NotNginx {
                why: "not a regular file",
            }
        };
        self.examined += 1;
        self.verdicts.insert(id, verdict.clone());
        self.used.insert(id);
        Ok(Some(verdict))
    }

    /// Forgets files no process ran during the scan that just ended, so the
    /// cache holds at most one entry per executable in use.
    pub fn end_scan(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.verdicts.retain(|id, _| used.contains(id));
    }
}

/// Examines an open executable of `len` bytes.
pub(super) fn examine(file: &File, len: u64) -> Verdict {
    if len > MAX_EXE_BYTES {
        return Verdict::NotNginx {
            why: "larger than any nginx build",
        };
    }
    let data = ReadCache::new(file);
    let found = match FileKind::parse(&data) {
        Ok(FileKind::Elf64) => elf_facts::<FileHeader64<Endianness>>(&data),
        Ok(FileKind::Elf32) => elf_facts::<FileHeader32<Endianness>>(&data),
        _ => Err("not an ELF executable"),
    };
    match found {
        Ok(rodata) => Verdict::Nginx {
            version: rodata
                .and_then(|r| find_version(file, r))
                .unwrap_or_else(|| UNKNOWN_VERSION.into()),
        },
        Err(why) => Verdict::NotNginx { why },
    }
}

/// Checks that the ELF defines nginx's core symbols; returns the file range
/// of `.rodata` (where the version string is), if it has one.
fn elf_facts<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<&File>,
) -> Result<Option<(u64, u64)>, &'static str> {
    const BAD_ELF: &str = "malformed ELF";
    let header = Elf::parse(data).map_err(|_| BAD_ELF)?;
    let endian = header.endian().map_err(|_| BAD_ELF)?;
    if header.shnum(endian, data).map_err(|_| BAD_ELF)? > MAX_SECTIONS {
        return Err("too many ELF sections");
    }
    let sections = header.sections(endian, data).map_err(|_| BAD_ELF)?;
    let mut missing: Vec<&[u8]> = NGINX_SYMBOLS.to_vec();
    // .dynsym survives stripping; .symtab covers static, unstripped builds.
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        for table in sections.iter().filter(|s| s.sh_type(endian) == kind) {
            let strtab = sections
                .section(SectionIndex(table.sh_link(endian) as usize))
                .map_err(|_| BAD_ELF)?;
            if table.sh_size(endian).into() > MAX_TABLE_BYTES || strtab.sh_size(endian).into() > MAX_TABLE_BYTES {
                return Err("symbol table too large");
            }
            let syms: &[Elf::Sym] = table.data_as_array(endian, data).map_err(|_| BAD_ELF)?;
            let strings = strtab.data(endian, data).map_err(|_| BAD_ELF)?;
            let strings = StringTable::new(strings, 0, strings.len() as u64);
            for sym in syms.iter().filter(|s| s.st_shndx(endian) != SHN_UNDEF) {
                if let Ok(name) = sym.name(endian, strings) {
                    missing.retain(|m| *m != name);
                }
            }
            if missing.is_empty() {
                let rodata = sections
                    .section_by_name(endian, b".rodata")
                    .and_then(|(_, s)| s.file_range(endian));
                return Ok(rodata);
            }
        }
    }
    Err("does not define nginx's core symbols")
}

/// The version after "nginx version: " in `range` of the file, read in
/// chunks (a marker split across two chunks is still found).
fn find_version(file: &File, (offset, size): (u64, u64)) -> Option<String> {
    let end = offset.checked_add(size.min(MAX_RODATA_SCAN))?;
    let finder = memchr::memmem::Finder::new(VERSION_MARKER);
    let overlap = VERSION_MARKER.len() + MAX_VERSION_LEN;
    let mut buf = vec![0u8; SCAN_CHUNK + overlap];
    let mut pos = offset;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = read_full_at(file, &mut buf[..want], pos)?;
        if n == 0 {
            return None;
        }
        let chunk = &buf[..n];
        let last = n < want || pos + (n as u64) >= end;
        if let Some(at) = finder.find(chunk) {
            let after = &chunk[at + VERSION_MARKER.len()..];
            // A marker too close to the chunk's end to hold a whole version
            // is read again from its start.
            if after.len() >= MAX_VERSION_LEN || at == 0 || last {
                return Some(version_token(after));
            }
            pos += at as u64;
            continue;
        }
        if last {
            return None;
        }
        pos += n.saturating_sub(overlap).max(1) as u64;
    }
    None
}

fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> Option<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(filled)
}

/// "nginx/1.22.1" from the bytes after the marker; [`UNKNOWN_VERSION`] unless
/// it is a short run of version characters.
fn version_token(after: &[u8]) -> String {
    let len = after
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || b"./_+-".contains(b)))
        .unwrap_or(after.len());
    let token = &after[..len];
    if token.is_empty() || token.len() > MAX_VERSION_LEN || !token.iter().any(u8::is_ascii_digit) {
        return UNKNOWN_VERSION.into();
    }
    String::from_utf8_lossy(token).into_owned()
}

/// Examines `path` directly.
#[cfg(test)]
pub(super) fn examine_path(path: &Path) -> Verdict {
    match File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len()))) {
        Ok((f, len)) => examine(&f, len),
        Err(_) => Verdict::NotNginx { why: "unreadable" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NGINX: &str = "/usr/sbin/nginx";

    fn nginx_installed() -> bool {
        ngxprobe_e2e::util::require_tool(NGINX, "apt-get install nginx").is_some()
    }

    #[test]
    fn debian_nginx_is_nginx_with_its_version() {
        if !nginx_installed() {
            return;
        }
        let Verdict::Nginx { version } = examine_path(Path::new(NGINX)) else {
            panic!("{NGINX} not recognised")
        };
        // The oracle: what the binary itself prints for `nginx -v`.
        let out = std::process::Command::new(NGINX).arg("-v").output().expect("nginx -v");
        let printed = String::from_utf8_lossy(&out.stderr);
        assert_eq!(printed.trim(), format!("nginx version: {version}"), "{printed}");
        assert!(version.starts_with("nginx/1."), "{version}");
    }

    #[test]
    fn other_programs_are_not_nginx() {
        for p in ["/bin/sleep", "/bin/sh", "/etc/hostname"] {
            assert!(
                matches!(examine_path(Path::new(p)), Verdict::NotNginx { .. }),
                "{p} taken for nginx"
            );
        }
    }

    #[test]
    fn marker_string_alone_is_not_enough() {
        // A non-ELF file carrying the version string and symbol names as text.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"nginx version: nginx/1.22.1\0ngx_cycle\0ngx_init_cycle\0ngx_modules\0")
            .unwrap();
        assert_eq!(
            examine_path(f.path()),
            Verdict::NotNginx {
                why: "not an ELF executable"
            }
        );
    }

    #[test]
    fn truncated_nginx_is_refused_not_crashed() {
        if !nginx_installed() {
            return;
        }
        let full = std::fs::read(NGINX).unwrap();
        for len in [0, 4, 64, 4096, full.len() / 2] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&full[..len]).unwrap();
            assert!(
                matches!(examine_path(f.path()), Verdict::NotNginx { .. }),
                "first {len} bytes of nginx taken for nginx"
            );
        }
    }

    #[test]
    fn version_found_across_chunk_boundary() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![b'x'; SCAN_CHUNK - 5];
        data.extend_from_slice(b"nginx version: openresty/1.25.3.2\n");
        data.extend(vec![0u8; 1000]);
        f.write_all(&data).unwrap();
        let file = f.reopen().unwrap();
        let v = find_version(&file, (0, data.len() as u64));
        assert_eq!(v.as_deref(), Some("openresty/1.25.3.2"));
        // Only inside the range.
        assert_eq!(find_version(&file, (0, 1000)), None);
    }

    #[test]
    fn odd_versions_are_unknown() {
        assert_eq!(version_token(b"nginx/1.22.1\n"), "nginx/1.22.1");
        assert_eq!(version_token(b"\x1b[31m"), UNKNOWN_VERSION);
        assert_eq!(version_token(b"%s"), UNKNOWN_VERSION);
        assert_eq!(version_token(&[b'1'; 200]), UNKNOWN_VERSION);
    }

    #[test]
    fn cache_examines_each_binary_once() {
        if !nginx_installed() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("nginx");
        std::fs::copy(NGINX, &copy).unwrap();
        let mut cache = ExeCache::default();
        for _ in 0..3 {
            assert!(matches!(cache.verdict(&copy), Ok(Some(Verdict::Nginx { .. }))));
            cache.end_scan();
        }
        assert_eq!(cache.examined, 1);
        // Rewritten in place (same inode): examined again, now refused.
        std::fs::write(&copy, std::fs::read("/bin/sleep").unwrap()).unwrap();
        assert!(matches!(cache.verdict(&copy), Ok(Some(Verdict::NotNginx { .. }))));
        assert_eq!(cache.examined, 2);
        // Unused for a scan: forgotten.
        cache.end_scan();
        cache.end_scan();
        assert!(cache.verdicts.is_empty());
        assert!(matches!(cache.verdict(&dir.path().join("gone")), Ok(None)));
    }
}
