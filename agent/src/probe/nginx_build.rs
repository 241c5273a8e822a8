//! Which nginx build an executable is, and the struct offsets the request
//! uprobe needs for it.
//!
//! nginx's structs change with its version, the architecture and configure
//! flags. `--with-compat` (Debian, Ubuntu, nginx.org packages) pins most
//! optional fields; NGX_MODULE_SIGNATURE (a string in every binary, which
//! nginx compares when loading dynamic modules) encodes the flags that still
//! move fields. So (version, arch, signature) selects a table below. A build
//! not in the table gets its offsets from DWARF debug information when it
//! has some (nginx_dwarf), else no uprobe: guessed offsets would report
//! garbage.
use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use agent_common::NginxOffsets;

use super::nginx_dwarf;
use object::{
    Endianness,
    elf::{EM_X86_64, FileHeader64},
    read::elf::{ElfFile, FileHeader},
    read::{Object, ObjectSymbol},
};

/// The function probed, and the global clock it reads.
pub const PROBED_FUNCTION: &str = "ngx_http_free_request";
const CACHED_TIME: &str = "ngx_cached_time";
const CORE_MODULE: &str = "ngx_http_core_module";

/// nginx executables are a few MB (OpenResty with LuaJIT ~30 MB).
const MAX_EXE_BYTES: u64 = 256 << 20;

/// What identifies an nginx build for offset selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildId {
    /// As `nginx -v` prints it after "nginx version: ", e.g. "nginx/1.22.1".
    pub version: String,
    pub arch: &'static str,
    /// NGX_MODULE_SIGNATURE, e.g. "8,4,8,0011111111010111001111111111111111".
    pub signature: String,
}

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version {:?}, arch {}, module signature {:?}",
            self.version, self.arch, self.signature
        )
    }
}

/// A build the uprobe can attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownBuild {
    pub id: BuildId,
    pub offsets: NginxOffsets,
    /// Where the offsets came from: "the offset table", "DWARF in the
    /// executable", "DWARF in <debug file>".
    pub source: String,
}

/// Why an executable gets no request uprobe.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not an x86_64 ELF executable nginx's offsets are known for ({why})")]
    NotElf { path: String, why: String },
    #[error("{path}: symbol {symbol} is not exported")]
    MissingSymbol { path: String, symbol: &'static str },
    #[error("{path}: unknown nginx build ({id}); per-request metrics need a known struct layout (DWARF: {dwarf})")]
    Unknown { path: String, id: BuildId, dwarf: String },
}

/// Debian 12's nginx 1.22.1 (1.22.1-9+deb12u*, amd64). Offsets from nginx
/// 1.22.1's headers configured with Debian's flags (offsetof on the structs),
/// checked against the binary's own code: ngx_http_free_request reads
/// r->connection at 0x8, r->pool at 0x58, headers_out.status at 0x288, the
/// `logged` bit as 0x40 of byte 0x51b, c->sent at 0x48.
const DEBIAN_1_22_1_X86_64: (&str, &str, &str, NginxOffsets) = (
    "nginx/1.22.1",
    "x86_64",
    "8,4,8,0011111111010111001111111111111111",
    NginxOffsets {
        cached_time_from_fn: 0,
        core_module_from_fn: 0,
        req_connection: 8,
        req_pool: 88,
        req_status: 648,
        req_err_status: 1256,
        req_method: 976,
        req_http_version: 984,
        req_request_length: 1248,
        req_start_sec: 960,
        req_start_msec: 968,
        req_stream: 1272,
        req_header_size: 1240,
        req_logged_byte: 1307,
        req_logged_mask: 0x40,
        conn_sent: 72,
        conn_ssl: 144,
        conn_local_sockaddr: 160,
        time_sec: 0,
        time_msec: 8,
        valid: 1,
        req_srv_conf: 32,
        cscf_server_name: 64,
        want_server_name: 0,
        req_span: 0,
        conn_span: 0,
    },
);

const KNOWN: [(&str, &str, &str, NginxOffsets); 1] = [DEBIAN_1_22_1_X86_64];

/// Debian 12's entry (the DWARF tests compare against it).
#[cfg(test)]
pub(super) fn debian_1_22_1_table() -> NginxOffsets {
    DEBIAN_1_22_1_X86_64.3
}

/// Reads the executable at `path` and selects its offsets.
pub fn identify(path: &Path) -> Result<KnownBuild, BuildError> {
    let shown = path.display().to_string();
    let read_err = |error| BuildError::Read {
        path: shown.clone(),
        error,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut data = Vec::new();
    file.take(MAX_EXE_BYTES).read_to_end(&mut data).map_err(read_err)?;
    identify_with(&shown, &data, &root_of(path))
}

/// The root directory of the process whose executable `path` is
/// (/proc/PID/exe → /proc/PID/root: a container's own filesystem), else /.
fn root_of(path: &Path) -> PathBuf {
    match (path.file_name(), path.parent()) {
        (Some(n), Some(dir)) if n == "exe" => dir.join("root"),
        _ => PathBuf::from("/"),
    }
}

#[cfg(test)]
fn identify_bytes(path: &str, data: &[u8]) -> Result<KnownBuild, BuildError> {
    identify_with(path, data, Path::new("/nonexistent-root"))
}

fn identify_with(path: &str, data: &[u8], root: &Path) -> Result<KnownBuild, BuildError> {
    let not_elf = |why: String| BuildError::NotElf {
        path: path.to_string(),
        why,
    };
    let elf = ElfFile::<FileHeader64<Endianness>>::parse(data).map_err(|e| not_elf(e.to_string()))?;
    let machine = elf.elf_header().e_machine(elf.endian());
    if machine != EM_X86_64 {
        return Err(not_elf(format!("ELF machine {machine}")));
    }
    let symbol = |name: &'static str| {
        elf.dynamic_symbols()
            .find(|s| s.name() == Ok(name) && !s.is_undefined())
            .map(|s| s.address())
            .ok_or(BuildError::MissingSymbol {
                path: path.to_string(),
                symbol: name,
            })
    };
    let function = symbol(PROBED_FUNCTION)?;
    let cached_time = symbol(CACHED_TIME)?;
    let core_module = symbol(CORE_MODULE)?;
    let id = BuildId {
        version: version_of(data).unwrap_or_else(|| "unknown".into()),
        arch: "x86_64",
        signature: signature_of(data).unwrap_or_else(|| "unknown".into()),
    };
    let known = KNOWN
        .iter()
        .find(|(v, a, s, _)| *v == id.version && *a == id.arch && *s == id.signature);
    let (mut offsets, source) = match known {
        Some((_, _, _, table)) => (*table, "the offset table".to_string()),
        None => match from_dwarf(data, root) {
            Ok(found) => found,
            Err(dwarf) => {
                return Err(BuildError::Unknown {
                    path: path.to_string(),
                    id,
                    dwarf,
                });
            }
        },
    };
    offsets.cached_time_from_fn = cached_time as i64 - function as i64;
    offsets.core_module_from_fn = core_module as i64 - function as i64;
    let Some(offsets) = offsets.with_spans() else {
        return Err(BuildError::Unknown {
            path: path.to_string(),
            id,
            dwarf: format!(
                "{source} puts fields beyond the bytes the uprobe reads or 8-byte fields at unaligned offsets: not nginx's layout"
            ),
        });
    };
    Ok(KnownBuild { id, offsets, source })
}

/// Offsets from the executable's own DWARF, else from its separate debug
/// file (by build id, in the process's root); why not, if neither has them.
fn from_dwarf(data: &[u8], root: &Path) -> Result<(NginxOffsets, String), String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let own = match nginx_dwarf::offsets(&file) {
        Ok(o) => return Ok((o, "DWARF in the executable".into())),
        Err(nginx_dwarf::DwarfError::Absent) => "none in the executable".to_string(),
        Err(e) => return Err(format!("in the executable: {e}")),
    };
    let Some(id) = file.build_id().ok().flatten().filter(|id| id.len() >= 2) else {
        return Err(format!("{own}, and it has no build id"));
    };
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let debug = root.join(format!("usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
    let shown = format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
    let mut bytes = Vec::new();
    match File::open(&debug) {
        Ok(f) => f
            .take(MAX_EXE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{own}; {shown}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{own} nor in {shown}"));
        }
        Err(e) => return Err(format!("{own}; {shown}: {e}")),
    };
    let debug_file = object::File::parse(&*bytes).map_err(|e| format!("{own}; {shown}: {e}"))?;
    nginx_dwarf::offsets(&debug_file)
        .map(|o| (o, format!("DWARF in {shown}")))
        .map_err(|e| format!("{own}; {shown}: {e}"))
}

/// "nginx/1.22.1" from "nginx version: nginx/1.22.1".
fn version_of(data: &[u8]) -> Option<String> {
    let marker = b"nginx version: ";
    let at = memchr::memmem::find(data, marker)? + marker.len();
    let rest = &data[at..data.len().min(at + 64)];
    let end = rest.iter().position(|b| !(b.is_ascii_graphic()))?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// NGX_MODULE_SIGNATURE: "<ptr size>,<sig_atomic_t size>,<time_t size>,"
/// then one 0/1 digit per build flag, NUL-terminated in .rodata.
fn signature_of(data: &[u8]) -> Option<String> {
    let re = regex::bytes::Regex::new(r"(?-u)\x00([0-9],[0-9],[0-9],[01]{20,80})\x00").ok()?;
    let m = re.captures(data)?.get(1)?;
    String::from_utf8(m.as_bytes().to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_NGINX: &str = "/usr/sbin/nginx";

    #[test]
    fn signature_and_version_are_found_between_nuls() {
        let data = b"junk\x00nginx version: nginx/1.22.1\x00x\x008,4,8,0011111111010111001111111111111111\x00";
        assert_eq!(version_of(data).as_deref(), Some("nginx/1.22.1"));
        assert_eq!(
            signature_of(data).as_deref(),
            Some("8,4,8,0011111111010111001111111111111111")
        );
        assert_eq!(signature_of(b"\x008,4,8,0012\x00"), None);
    }

    #[test]
    fn debians_nginx_is_known() {
        // The build machine's nginx is the one the table was made for.
        if !Path::new(DEBIAN_NGINX).exists() {
            eprintln!("{DEBIAN_NGINX} absent: skipped");
            return;
        }
        let b = identify(Path::new(DEBIAN_NGINX)).expect("Debian's nginx 1.22.1 is in the table");
        assert_eq!(b.id.version, "nginx/1.22.1");
        assert_ne!(b.offsets.cached_time_from_fn, 0);
        assert_ne!(b.offsets.core_module_from_fn, 0);
    }

    #[test]
    fn altered_signature_is_unknown() {
        let Ok(mut data) = std::fs::read(DEBIAN_NGINX) else {
            return;
        };
        let sig = b"8,4,8,0011111111010111001111111111111111";
        let at = memchr::memmem::find(&data, sig).expect("signature in the binary");
        data[at + 6] = b'1';
        match identify_bytes("copy", &data) {
            Err(BuildError::Unknown { id, .. }) => assert!(id.signature.starts_with("8,4,8,1")),
            other => panic!("expected Unknown, got {other:?}"),
        }
    }

    /// A stripped build the table does not know, whose separate debug file
    /// (by build id) is in the process's root: offsets from there. Without
    /// it, refused, saying where DWARF was looked for.
    #[test]
    fn debug_file_by_build_id_in_the_process_root() {
        let Ok(mut data) = std::fs::read(DEBIAN_NGINX) else {
            return;
        };
        let Some(dev) = ngxprobe_e2e::nginx_dev::NginxDev::require() else {
            return;
        };
        let sig = b"8,4,8,0011111111010111001111111111111111";
        let at = memchr::memmem::find(&data, sig).expect("signature in the binary");
        data[at + 6] = b'1';
        let root = tempfile::tempdir().unwrap();
        match identify_with("copy", &data, root.path()) {
            Err(BuildError::Unknown { dwarf, .. }) => {
                assert!(
                    dwarf.contains("none in the executable nor in /usr/lib/debug/.build-id/"),
                    "{dwarf}"
                )
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
        let id = object::File::parse(&*data)
            .unwrap()
            .build_id()
            .unwrap()
            .unwrap()
            .to_vec();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let dir = root.path().join("usr/lib/debug/.build-id").join(&hex[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(dev.debug_object(5).unwrap(), dir.join(format!("{}.debug", &hex[2..]))).unwrap();
        let b = identify_with("copy", &data, root.path()).expect("offsets from the debug file");
        assert!(
            b.source.starts_with("DWARF in /usr/lib/debug/.build-id/"),
            "{}",
            b.source
        );
        let mut want = DEBIAN_1_22_1_X86_64.3;
        want.cached_time_from_fn = b.offsets.cached_time_from_fn;
        want.core_module_from_fn = b.offsets.core_module_from_fn;
        // The furthest fields: the `logged` byte (1307) and c->local_sockaddr (160).
        want.req_span = 1308;
        want.conn_span = 168;
        assert_eq!(b.offsets, want);
    }

    #[test]
    fn spans_cover_debian_and_refuse_unaligned_words() {
        let t = DEBIAN_1_22_1_X86_64.3.with_spans().expect("Debian's layout fits");
        assert_eq!((t.req_span, t.conn_span), (1308, 168));
        // The uprobe loads each 8-byte field as one aligned word of its copy.
        let mut odd = DEBIAN_1_22_1_X86_64.3;
        odd.req_status += 4;
        assert_eq!(odd.with_spans(), None);
        let mut odd = DEBIAN_1_22_1_X86_64.3;
        odd.conn_sent += 1;
        assert_eq!(odd.with_spans(), None);
        // The one-byte `logged` flags need no alignment.
        let mut t = DEBIAN_1_22_1_X86_64.3;
        t.req_logged_byte += 1;
        assert_eq!(t.with_spans().map(|t| t.req_span), Some(1309));
    }

    #[test]
    fn non_elf_is_refused() {
        assert!(matches!(
            identify_bytes("x", b"#!/bin/sh\n"),
            Err(BuildError::NotElf { .. })
        ));
    }
}
