//! Builds the eBPF object (agent-ebpf) with the pinned nightly toolchain and
//! bpf-linker, so `cargo build -p ngxprobe` is enough once `cargo xtask setup` ran.
//!
//! With AYA_BUILD_SKIP=1 (fast `cargo check` while editing userspace code) an
//! empty object is written instead and the agent refuses to start with a clear
//! message.
use anyhow::{Context as _, anyhow};

/// The nightly that builds agent-ebpf (rustc 1.97, LLVM 22: matches bpf-linker 0.13 on llvm-22).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    println!("cargo:rerun-if-changed={root}/../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs (run `cargo xtask setup` first: pinned nightly + bpf-linker)")?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ngxprobe");
    if !out.exists() {
        std::fs::write(&out, b"").context("writing the placeholder eBPF object")?;
    }
    Ok(())
}
