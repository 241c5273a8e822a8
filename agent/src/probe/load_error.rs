//! Errors of the probe stage, worded for an operator: what failed, why, and
//! what to check. Verifier rejections carry the tail of the verifier log and
//! the kernel version.
use aya::{EbpfError, programs::ProgramError};

/// Lines of the verifier log kept in an error (the end says why it refused).
const VERIFIER_TAIL_LINES: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this ngxprobe was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`")]
    NoObject,
    #[error("kernel BTF: {0} (ngxprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Offsets(String),
    #[error("loading kernel BTF from /sys/kernel/btf/vmlinux: {0}")]
    Btf(String),
    #[error("the eBPF object has no program {0} (build mismatch)")]
    MissingProgram(&'static str),
    #[error(
        "the kernel verifier rejected eBPF program {program} on kernel {kernel}: {reason}\n--- verifier log (last lines) ---\n{log_tail}"
    )]
    Verifier {
        program: String,
        kernel: String,
        reason: String,
        log_tail: String,
    },
    #[error("loading eBPF program {program} on kernel {kernel}: {reason}")]
    Load {
        program: String,
        kernel: String,
        reason: String,
    },
    #[error("attaching eBPF program {program} to {tracepoint} on kernel {kernel}: {reason}")]
    Attach {
        program: String,
        tracepoint: String,
        kernel: String,
        reason: String,
    },
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(VERIFIER_TAIL_LINES);
    lines[from..].join("\n")
}

pub fn from_program_error(program: &str, e: ProgramError) -> ProbeError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => ProbeError::Verifier {
            program: program.to_string(),
            kernel: kernel_release(),
            reason: io_error.to_string(),
            log_tail: tail(&verifier_log.to_string()),
        },
        other => ProbeError::Load {
            program: program.to_string(),
            kernel: kernel_release(),
            reason: other.to_string(),
        },
    }
}

pub fn attach_error(program: &str, tracepoint: &str, e: ProgramError) -> ProbeError {
    ProbeError::Attach {
        program: program.to_string(),
        tracepoint: format!("tracepoint {tracepoint}"),
        kernel: kernel_release(),
        reason: e.to_string(),
    }
}

/// A uprobe that could not be attached to `target` (an executable and symbol).
pub fn uprobe_attach_error(program: &str, target: &str, e: ProgramError) -> ProbeError {
    ProbeError::Attach {
        program: program.to_string(),
        tracepoint: format!("uprobe {target}"),
        kernel: kernel_release(),
        reason: e.to_string(),
    }
}

pub fn from_ebpf_error(e: EbpfError) -> ProbeError {
    match e {
        EbpfError::ProgramError(pe) => from_program_error("(object)", pe),
        other => ProbeError::Load {
            program: "(object)".into(),
            kernel: kernel_release(),
            reason: other.to_string(),
        },
    }
}
