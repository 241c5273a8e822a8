//! Kernel struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Rust eBPF has no CO-RE field relocations, and hard-coded offsets work on one
//! kernel only: we look the few fields we need up here and hand them to the
//! programs as a global.
use std::path::Path;

use agent_common::{KernelOffsets, TcpOffsets};
use btf_rs::{Btf, BtfType, Type};

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading BTF from {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {structure} has no field {field}")]
    NoField { structure: String, field: String },
}

/// Reads the offsets ngxprobe's programs need from the BTF file at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, OffsetsError> {
    let btf = Btf::from_file(path).map_err(|e| OffsetsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let skc_num = field_offset(&btf, "sock_common", "skc_num")?;
    let skc_net = field_offset(&btf, "sock_common", "skc_net")?
        + field_offset(&btf, "possible_net_t", "net").or_else(|_| {
            // possible_net_t is a typedef of an anonymous struct on most kernels.
            typedef_field_offset(&btf, "possible_net_t", "net")
        })?;
    let net_ns_inum = field_offset(&btf, "net", "ns")? + field_offset(&btf, "ns_common", "inum")?;
    let sk_wmem_queued = field_offset(&btf, "sock", "sk_wmem_queued")?;
    let sk_sndbuf = field_offset(&btf, "sock", "sk_sndbuf")?;
    Ok(KernelOffsets {
        sk_wmem_queued,
        sk_sndbuf,
        skc_num,
        skc_net,
        net_ns_inum,
        valid: 1,
    })
}

/// Offsets the tcp_health programs need (tcp_sock's RTT, bytes, chrono
/// stats; the skb's segment count; task_struct's exit code and parent).
pub fn tcp_offsets(path: &Path) -> Result<TcpOffsets, OffsetsError> {
    let btf = Btf::from_file(path).map_err(|e| OffsetsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let tcp = |f: &str| field_offset(&btf, "tcp_sock", f);
    Ok(TcpOffsets {
        sk_err: field_offset(&btf, "sock", "sk_err")?,
        inet_sport: field_offset(&btf, "inet_sock", "inet_sport")?,
        srtt_us: tcp("srtt_us")?,
        bytes_sent: tcp("bytes_sent")?,
        bytes_received: tcp("bytes_received")?,
        segs_out: tcp("segs_out")?,
        chrono_type: tcp("chrono_type")?,
        chrono_start: tcp("chrono_start")?,
        chrono_stat: tcp("chrono_stat")?,
        skb_gso_segs: field_offset(&btf, "sk_buff", "cb")? + field_offset(&btf, "tcp_skb_cb", "tcp_gso_segs")?,
        task_exit_code: field_offset(&btf, "task_struct", "exit_code")?,
        task_tgid: field_offset(&btf, "task_struct", "tgid")?,
        task_real_parent: field_offset(&btf, "task_struct", "real_parent")?,
        // sigpending.signal is a sigset_t whose sig[0] holds signals 1-64.
        task_pending_signal: field_offset(&btf, "task_struct", "pending")?
            + field_offset(&btf, "sigpending", "signal")?,
        valid: 1,
    })
}

/// Byte offset of `field` in `struct structure`, looking through anonymous
/// struct/union members as C does.
fn field_offset(btf: &Btf, structure: &str, field: &str) -> Result<u32, OffsetsError> {
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|_| OffsetsError::NoStruct(structure.to_string()))?;
    for t in types {
        if let Type::Struct(s) = t {
            if let Some(bits) = find_member(btf, &s, field, 0) {
                return Ok(bits / 8);
            }
            return Err(no_field(structure, field));
        }
    }
    Err(OffsetsError::NoStruct(structure.to_string()))
}

fn typedef_field_offset(btf: &Btf, name: &str, field: &str) -> Result<u32, OffsetsError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| OffsetsError::NoStruct(name.to_string()))?;
    for t in types {
        if let Type::Typedef(td) = t
            && let Some(Type::Struct(s)) = strip(btf, btf.resolve_chained_type(&td).ok())
            && let Some(bits) = find_member(btf, &s, field, 0)
        {
            return Ok(bits / 8);
        }
    }
    Err(no_field(name, field))
}

fn no_field(structure: &str, field: &str) -> OffsetsError {
    OffsetsError::NoField {
        structure: structure.to_string(),
        field: field.to_string(),
    }
}

/// Follows typedef/const/volatile to the underlying type.
fn strip(btf: &Btf, mut t: Option<Type>) -> Option<Type> {
    for _ in 0..16 {
        match t {
            Some(Type::Typedef(ref x)) => t = btf.resolve_chained_type(x).ok(),
            Some(Type::Const(ref x)) | Some(Type::Volatile(ref x)) => t = btf.resolve_chained_type(x).ok(),
            other => return other,
        }
    }
    None
}

/// Bit offset of `field` within `s` (plus `base`), searching anonymous members.
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some(base + m.bit_offset());
        }
        if name.is_empty() {
            let inner = strip(btf, btf.resolve_chained_type(m).ok());
            if let Some(Type::Struct(x)) | Some(Type::Union(x)) = inner
                && let Some(off) = find_member(btf, &x, field, base + m.bit_offset())
            {
                return Some(off);
            }
        }
    }
    None
}

// Keep the trait in scope for resolve_name on members.
#[allow(dead_code)]
fn _uses(_: &dyn BtfType) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against this machine's kernel: the offsets exist and are plausible
    /// (skc_num sits in the first cache line of sock_common; skc_net after it).
    #[test]
    fn offsets_from_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            panic!("this test needs kernel BTF at {}", path.display());
        }
        let off = kernel_offsets(path).expect("offsets");
        assert_eq!(off.valid, 1);
        assert!(off.skc_num > 0 && off.skc_num < 64, "skc_num={}", off.skc_num);
        assert!(
            off.skc_net > off.skc_num && off.skc_net < 256,
            "skc_net={}",
            off.skc_net
        );
        assert!(off.net_ns_inum > 0 && off.net_ns_inum < 4096);
    }

    /// tcp_sock's fields lie after sock's; the skb's segment count is in cb.
    #[test]
    fn tcp_offsets_from_running_kernel() {
        let t = tcp_offsets(Path::new("/sys/kernel/btf/vmlinux")).expect("offsets");
        let k = kernel_offsets(Path::new("/sys/kernel/btf/vmlinux")).expect("offsets");
        assert_eq!(t.valid, 1);
        assert!(t.srtt_us > k.sk_sndbuf && t.bytes_sent > k.sk_sndbuf, "{t:?}");
        assert_eq!(t.chrono_stat % 4, 0);
        assert!(t.skb_gso_segs > 0 && t.task_real_parent > t.task_exit_code, "{t:?}");
        assert!(t.task_pending_signal > 0, "{t:?}");
    }

    #[test]
    fn missing_field_is_an_error_naming_it() {
        let btf = Btf::from_file("/sys/kernel/btf/vmlinux").expect("btf");
        let err = field_offset(&btf, "sock_common", "no_such_field").unwrap_err();
        assert!(err.to_string().contains("no_such_field"), "{err}");
    }
}
