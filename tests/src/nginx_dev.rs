//! nginx's structs as Debian built them, compiled by gcc: the oracles for
//! the request uprobe's struct offsets.
//!
//! Debian's `nginx-dev` ships nginx's sources with the configure flags of
//! Debian's build (`conf_flags`, for third-party modules). Configured in a
//! temporary directory (~15 s), they give `offsetof()` of every field the
//! uprobe reads (a C program's output) and real DWARF describing the same
//! structs (a shared object compiled with `-g`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use crate::util::TempDir;

/// Where Debian's nginx-dev puts the sources.
pub const SOURCES: &str = "/usr/share/nginx/src";

/// The fields the uprobe reads, as NginxOffsets names them, and the C
/// expression of each offset.
pub const FIELDS: &[(&str, &str)] = &[
    ("req_connection", "offsetof(ngx_http_request_t, connection)"),
    ("req_pool", "offsetof(ngx_http_request_t, pool)"),
    (
        "req_status",
        "offsetof(ngx_http_request_t, headers_out) + offsetof(ngx_http_headers_out_t, status)",
    ),
    ("req_err_status", "offsetof(ngx_http_request_t, err_status)"),
    ("req_method", "offsetof(ngx_http_request_t, method)"),
    ("req_http_version", "offsetof(ngx_http_request_t, http_version)"),
    ("req_request_length", "offsetof(ngx_http_request_t, request_length)"),
    ("req_start_sec", "offsetof(ngx_http_request_t, start_sec)"),
    ("req_start_msec", "offsetof(ngx_http_request_t, start_msec)"),
    ("req_stream", "offsetof(ngx_http_request_t, stream)"),
    ("req_header_size", "offsetof(ngx_http_request_t, header_size)"),
    ("req_srv_conf", "offsetof(ngx_http_request_t, srv_conf)"),
    ("conn_sent", "offsetof(ngx_connection_t, sent)"),
    ("conn_ssl", "offsetof(ngx_connection_t, ssl)"),
    ("conn_local_sockaddr", "offsetof(ngx_connection_t, local_sockaddr)"),
    ("time_sec", "offsetof(ngx_time_t, sec)"),
    ("time_msec", "offsetof(ngx_time_t, msec)"),
    ("cscf_server_name", "offsetof(ngx_http_core_srv_conf_t, server_name)"),
];

const HEADERS: &str = "#include <ngx_config.h>\n#include <ngx_core.h>\n#include <ngx_http.h>\n";

/// nginx-dev's sources after `./configure` with Debian's flags, in a
/// directory removed on drop.
pub struct NginxDev {
    _dir: TempDir,
    src: PathBuf,
}

impl NginxDev {
    /// None when nginx-dev is not installed.
    pub fn configure() -> Result<Option<NginxDev>> {
        if !Path::new(SOURCES).join("conf_flags").exists() {
            return Ok(None);
        }
        let dir = TempDir::new("nginx-dev")?;
        let src = dir.path().join("src");
        run(Command::new("cp").arg("-r").arg(SOURCES).arg(&src))?;
        // conf_flags is a bash array assignment: NGX_CONF_FLAGS=( ... ).
        run(Command::new("bash")
            .current_dir(&src)
            .arg("-c")
            .arg("set -e; source ./conf_flags; ./configure \"${NGX_CONF_FLAGS[@]}\" >configure.log 2>&1"))
        .context("./configure with Debian's flags (see configure.log)")?;
        Ok(Some(NginxDev { _dir: dir, src }))
    }

    /// The configured sources for a test: None (skipped, or failed under
    /// CI) when nginx-dev is not installed; a configure failure panics.
    pub fn require() -> Option<NginxDev> {
        match NginxDev::configure() {
            Ok(Some(d)) => Some(d),
            Ok(None) => {
                crate::util::skip_or_fail("nginx-dev not installed (cargo xtask setup installs it)");
                None
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    /// offsetof() of every field in [`FIELDS`].
    pub fn offsetof_table(&self) -> Result<BTreeMap<String, u64>> {
        offsetof_table(&self.src)
    }

    /// See [`debug_object`].
    pub fn debug_object(&self, dwarf: u8) -> Result<PathBuf> {
        debug_object(&self.src, dwarf)
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn gcc(src: &Path) -> Command {
    let mut c = Command::new("gcc");
    for inc in [
        "src/core",
        "src/event",
        "src/event/modules",
        "src/os/unix",
        "objs",
        "src/http",
        "src/http/modules",
        "src/http/v2",
    ] {
        c.arg("-I").arg(src.join(inc));
    }
    c
}

/// offsetof() of every field in [`FIELDS`], from a C program compiled
/// against the configured headers.
fn offsetof_table(src: &Path) -> Result<BTreeMap<String, u64>> {
    let dir = src.join("ngxprobe-offsets");
    std::fs::create_dir_all(&dir)?;
    let mut c = format!("{HEADERS}#include <stdio.h>\nint main(void) {{\n");
    for (name, expr) in FIELDS {
        c.push_str(&format!("  printf(\"{name} %zu\\n\", (size_t) ({expr}));\n"));
    }
    c.push_str("  return 0;\n}\n");
    let file = dir.join("offsets.c");
    std::fs::write(&file, c)?;
    let exe = dir.join("offsets");
    run(gcc(src).arg("-o").arg(&exe).arg(&file))?;
    let out = Command::new(&exe).output()?;
    ensure!(out.status.success(), "{exe:?}: {}", out.status);
    let mut table = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let (k, v) = line.split_once(' ').context("offsets output")?;
        table.insert(k.to_string(), v.parse()?);
    }
    Ok(table)
}

/// A shared object whose DWARF (version `dwarf`) describes the structs the
/// uprobe reads: compiled with `-g` from the configured headers (one global
/// pointer of each type, so gcc emits the types).
fn debug_object(src: &Path, dwarf: u8) -> Result<PathBuf> {
    let dir = src.join("ngxprobe-offsets");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("types.c");
    std::fs::write(
        &file,
        format!(
            "{HEADERS}ngx_http_request_t *ngxprobe_r;\nngx_connection_t *ngxprobe_c;\n\
             ngx_time_t *ngxprobe_t;\nngx_http_core_srv_conf_t *ngxprobe_cscf;\n"
        ),
    )?;
    let so = dir.join(format!("types-dwarf{dwarf}.so"));
    run(gcc(src)
        .arg(format!("-gdwarf-{dwarf}"))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&file))?;
    Ok(so)
}

/// Copies the DWARF sections of `debug` into the executable `exe` (objcopy
/// --add-section): an nginx that carries its own debug information, as a
/// build from source does.
pub fn add_debug_sections(debug: &Path, exe: &Path) -> Result<()> {
    let dir = exe.with_extension("sections");
    std::fs::create_dir_all(&dir)?;
    let mut add = Command::new("objcopy");
    for name in [
        "debug_info",
        "debug_abbrev",
        "debug_str",
        "debug_line",
        "debug_line_str",
        "debug_str_offsets",
    ] {
        let out = dir.join(name);
        // --dump-section (not -O binary, which writes only loaded sections);
        // fails for a section the object does not have.
        let got = Command::new("objcopy")
            .arg("--dump-section")
            .arg(format!(".{name}={}", out.display()))
            .arg(debug)
            .arg(dir.join("scratch"))
            .stderr(std::process::Stdio::null())
            .status()?;
        if got.success() && std::fs::metadata(&out).map(|m| m.len() > 0).unwrap_or(false) {
            add.arg("--add-section").arg(format!(".{name}={}", out.display()));
        }
    }
    run(add.arg(exe))
}
