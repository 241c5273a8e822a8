//! Looks at the head of the buffer nginx just read or wrote, through the
//! syscall's own registers (`bpf_task_pt_regs`): a few bytes, never the body.
//!
//! Only x86_64 is decoded for now; elsewhere every read counts as a request
//! start and writes are classified by length alone.
use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

/// What a write looked like.
pub struct SendHead {
    /// The write starts with a final (non-1xx) HTTP/1.x status line.
    pub final_status: bool,
    /// Bytes the syscall asked to write (0 = unknown).
    pub requested: u64,
}

struct SyscallArgs {
    nr: u64,
    /// Second argument (buffer or iovec pointer).
    arg2: u64,
    /// Third argument (length or iovec count).
    arg3: u64,
    /// Fourth argument (sendfile's count).
    arg4: u64,
}

// x86_64 `struct pt_regs` (arch ABI): r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax.
// One read covers r10 (index 7) .. orig_ax (index 15).
#[cfg(bpf_target_arch = "x86_64")]
fn syscall_args() -> Option<SyscallArgs> {
    // SAFETY: helpers valid in tracing programs; reads go through probe_read.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const [u64; 9];
        if regs.is_null() {
            return None;
        }
        let r = bpf_probe_read_kernel((regs as *const u8).add(7 * 8) as *const [u64; 9]).ok()?;
        Some(SyscallArgs {
            nr: r[8],
            arg2: r[6],
            arg3: r[5],
            arg4: r[0],
        })
    }
}

#[cfg(not(bpf_target_arch = "x86_64"))]
fn syscall_args() -> Option<SyscallArgs> {
    None
}

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_WRITEV: u64 = 20;
const SYS_SENDFILE: u64 = 40;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
/// iovecs summed to know how much a writev asked for (nginx uses few).
const MAX_IOVS: u64 = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// True if the bytes just read begin like an HTTP/1.x request line: a method
/// token of 3 to 14 upper-case letters, a space, and the start of a request
/// target ('/', '*', or an absolute URI / CONNECT authority). Unknown syscalls
/// say yes. Body bytes nginx discards after answering early rarely look like
/// that; a run of capitals alone is not enough.
#[inline(always)]
pub fn looks_like_request_start() -> bool {
    let Some(a) = syscall_args() else {
        return true;
    };
    if a.nr != SYS_READ && a.nr != SYS_RECVFROM {
        return true;
    }
    // SAFETY: user memory is read with bpf_probe_read_user only.
    let Ok(b) = (unsafe { bpf_probe_read_user(a.arg2 as *const [u8; 16]) }) else {
        return true;
    };
    let mut i = 0;
    while i < 15 {
        let c = b[i];
        if c == b' ' {
            let t = b[i + 1];
            return i >= 3 && (t == b'/' || t == b'*' || t.is_ascii_alphanumeric());
        }
        if !(c.is_ascii_uppercase() || c == b'-' || c == b'_') {
            return false;
        }
        i += 1;
    }
    false
}

/// Classifies the write behind the current `sock_send_length` event.
#[inline(always)]
pub fn send_head(ret: i32) -> SendHead {
    let mut out = SendHead {
        final_status: false,
        requested: 0,
    };
    let Some(a) = syscall_args() else {
        return out;
    };
    let mut head_ptr: u64 = 0;
    let mut head_len: u64 = 0;
    match a.nr {
        SYS_WRITE | SYS_SENDTO => {
            head_ptr = a.arg2;
            head_len = a.arg3;
            out.requested = a.arg3;
        }
        SYS_WRITEV => {
            let iov = a.arg2 as *const IoVec;
            let cnt = a.arg3;
            let mut total: u64 = 0;
            let mut i: u64 = 0;
            while i < MAX_IOVS {
                if i >= cnt {
                    break;
                }
                // SAFETY: user memory is read with bpf_probe_read_user only.
                let Ok(v) = (unsafe { bpf_probe_read_user(iov.wrapping_add(i as usize)) }) else {
                    return out;
                };
                if i == 0 {
                    head_ptr = v.base;
                    head_len = v.len;
                }
                total = total.wrapping_add(v.len);
                i += 1;
            }
            // More iovecs than we sum: the length is only a lower bound, so a
            // short write cannot be told apart; leave it unknown.
            out.requested = if cnt > MAX_IOVS { 0 } else { total };
        }
        SYS_SENDFILE => out.requested = a.arg4,
        _ => {}
    }
    if ret >= 12 && head_len >= 12 && head_ptr != 0 {
        // SAFETY: as above.
        if let Ok(h) = unsafe { bpf_probe_read_user(head_ptr as *const [u8; 12]) } {
            out.final_status = is_final_status_line(&h);
        }
    }
    out
}

/// "HTTP/1.x NNN" with NNN in 200..599 (1xx are interim: 100 Continue, 101).
#[inline(always)]
fn is_final_status_line(h: &[u8; 12]) -> bool {
    h[0] == b'H'
        && h[1] == b'T'
        && h[2] == b'T'
        && h[3] == b'P'
        && h[4] == b'/'
        && h[5] == b'1'
        && h[6] == b'.'
        && h[8] == b' '
        && h[9] >= b'2'
        && h[9] <= b'5'
        && h[10].is_ascii_digit()
        && h[11].is_ascii_digit()
}
