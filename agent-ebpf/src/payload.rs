//! Reads the current syscall's arguments (`bpf_task_pt_regs`) and, only when
//! the socket view is ambiguous, a few bytes of the buffer nginx just read or
//! wrote — never the body, and never on the common path.
//!
//! Only x86_64 registers are decoded for now; elsewhere reads count as request
//! starts and writes are classified by the socket alone.
use agent_common::{FIRST_BYTES, STATUS_HEAD, UNPARSED_NONE, classify_first_bytes, status_of_head};
use aya_ebpf::helpers::{
    bpf_probe_read_user,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

/// x86_64 `struct pt_regs` (arch ABI, stable).
#[repr(C)]
struct PtRegs {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    bp: u64,
    bx: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    ax: u64,
    cx: u64,
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
    ip: u64,
    cs: u64,
    flags: u64,
    sp: u64,
}

/// The arguments of the syscall the task is in.
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub nr: u64,
    /// Second argument (buffer or iovec pointer).
    pub arg2: u64,
    /// Third argument (length or iovec count).
    pub arg3: u64,
    /// Fourth argument (sendfile's count).
    pub arg4: u64,
    /// The user stack pointer at the syscall.
    pub sp: u64,
}

pub const SYS_READ: u64 = 0;
pub const SYS_WRITE: u64 = 1;
pub const SYS_SENDFILE: u64 = 40;
pub const SYS_SENDTO: u64 = 44;
pub const SYS_RECVFROM: u64 = 45;
/// Unknown syscall (io_uring, other arch): nothing can be read.
pub const SYS_UNKNOWN: u64 = u64::MAX;

/// Length of nginx's interim response, always sent alone with send():
/// "HTTP/1.1 100 Continue\r\n\r\n".
pub const CONTINUE_LEN: u64 = 25;

#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn syscall_args() -> SyscallArgs {
    // SAFETY: bpf_task_pt_regs returns a trusted BTF pointer to the task's
    // saved user registers; the verifier turns these loads into checked ones.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const PtRegs;
        if regs.is_null() {
            return unknown();
        }
        SyscallArgs {
            nr: (*regs).orig_ax,
            arg2: (*regs).si,
            arg3: (*regs).dx,
            arg4: (*regs).r10,
            sp: (*regs).sp,
        }
    }
}

#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn syscall_args() -> SyscallArgs {
    unknown()
}

#[inline(always)]
fn unknown() -> SyscallArgs {
    SyscallArgs {
        nr: SYS_UNKNOWN,
        arg2: 0,
        arg3: 0,
        arg4: 0,
        sp: 0,
    }
}

/// Bytes above the stack pointer that still count as the caller's stack.
const STACK_WINDOW: u64 = 1 << 20;

/// True if the read goes into a buffer on the caller's stack. nginx reads
/// request lines into pool memory, but the tail of a request body it
/// discards, and lingering-close input, into stack buffers
/// (ngx_http_read_discarded_request_body, ngx_http_lingering_close_handler):
/// telling the two apart needs no look at the bytes.
#[inline(always)]
pub fn reads_into_stack(a: &SyscallArgs) -> bool {
    (a.nr == SYS_READ || a.nr == SYS_RECVFROM) && a.sp != 0 && a.arg2 >= a.sp && a.arg2 - a.sp < STACK_WINDOW
}

/// What the connection's first read says about its protocol (an UNPARSED_*
/// constant), from the first bytes of the buffer it filled: nginx reads a
/// request line with recv(), OpenSSL a TLS record header with read(). A read
/// whose buffer cannot be found or read (another syscall, another arch) is
/// taken for HTTP/1.x, as before the bytes were looked at.
#[inline(always)]
pub fn first_read_kind(a: &SyscallArgs, ret: u32) -> u8 {
    if a.nr != SYS_READ && a.nr != SYS_RECVFROM {
        return UNPARSED_NONE;
    }
    // SAFETY: user memory is read with bpf_probe_read_user only.
    let Ok(head) = (unsafe { bpf_probe_read_user(a.arg2 as *const [u8; FIRST_BYTES]) }) else {
        return UNPARSED_NONE;
    };
    classify_first_bytes(&head, ret as usize)
}

/// What the head of a plain write (write/sendto) says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// "HTTP/1.x 1xx": interim (100 Continue).
    Interim,
    /// "HTTP/1.x NNN" with NNN in 200..599.
    Final,
    /// Anything else: body bytes.
    Other,
}

/// Reads the first 12 bytes of the buffer a write/sendto sent. For writev the
/// head is behind the first iovec.
#[inline(always)]
pub fn write_head(a: &SyscallArgs) -> Head {
    let ptr = if a.nr == SYS_WRITE || a.nr == SYS_SENDTO {
        a.arg2
    } else if a.nr == SYS_WRITEV {
        // SAFETY: user memory is read with bpf_probe_read_user only.
        match unsafe { bpf_probe_read_user(a.arg2 as *const u64) } {
            Ok(base) => base,
            Err(_) => return Head::Other,
        }
    } else {
        return Head::Other;
    };
    // SAFETY: as above.
    let Ok(h) = (unsafe { bpf_probe_read_user(ptr as *const [u8; STATUS_HEAD]) }) else {
        return Head::Other;
    };
    match status_of_head(&h) {
        100..=199 => Head::Interim,
        200..=599 => Head::Final,
        _ => Head::Other,
    }
}

pub const SYS_WRITEV: u64 = 20;
