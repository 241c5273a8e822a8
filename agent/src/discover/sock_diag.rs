//! Dump of established TCP sockets with their cookies via NETLINK_SOCK_DIAG,
//! in the network namespace of the calling thread.
//!
//! Hand-rolled on libc: requests are built and replies parsed as byte slices
//! with explicit offsets (layouts from linux/netlink.h and linux/inet_diag.h),
//! and every length that comes from the kernel is checked before use.
use super::DiscoverError;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH

const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;

/// sizeof(struct nlmsghdr).
const NLMSG_HDR_LEN: usize = 16;
/// sizeof(struct inet_diag_req_v2): family, protocol, ext, pad, states, inet_diag_sockid (48).
const REQ_V2_LEN: usize = 56;
/// sizeof(struct inet_diag_msg): family, state, timer, retrans, sockid (48), 5 × u32.
const DIAG_MSG_LEN: usize = 72;
/// Offsets inside struct inet_diag_msg.
const MSG_SPORT: usize = 4; // __be16 idiag_sport (first field of the sockid)
const MSG_COOKIE: usize = 4 + 40; // sockid: sport 2, dport 2, src 16, dst 16, if 4, then cookie[2]

/// Buffer for one netlink datagram: the kernel caps dump skbs at 32 KiB
/// (netlink max_recvmsg_len), so 64 KiB never truncates.
const RECV_BUF_LEN: usize = 64 * 1024;

/// A socket found by the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DiagSocket {
    pub cookie: u64,
    pub local_port: u16,
}

fn diag_err(what: &'static str, source: io::Error) -> DiscoverError {
    DiscoverError::SockDiag { what, source }
}

/// ESTABLISHED and CLOSE_WAIT TCP sockets (IPv4 and IPv6) of the calling
/// thread's network namespace.
pub(super) fn dump_established() -> Result<Vec<DiagSocket>, DiscoverError> {
    let sock = open_socket()?;
    let mut out = Vec::new();
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send_request(&sock, seq, family)?;
        receive_dump(&sock, seq, &mut out)?;
    }
    Ok(out)
}

fn open_socket() -> Result<OwnedFd, DiscoverError> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(diag_err(
            "socket(AF_NETLINK, NETLINK_SOCK_DIAG)",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// nlmsghdr + inet_diag_req_v2 asking for a dump of one family's TCP sockets.
pub(super) fn build_request(seq: u32, family: u8) -> [u8; NLMSG_HDR_LEN + REQ_V2_LEN] {
    let mut req = [0u8; NLMSG_HDR_LEN + REQ_V2_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR_LEN + REQ_V2_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: addressed to the kernel. The sockid stays zero: no filter.
    let body = &mut req[NLMSG_HDR_LEN..];
    body[0] = family;
    body[1] = libc::IPPROTO_TCP as u8;
    let states: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);
    body[4..8].copy_from_slice(&states.to_ne_bytes());
    req
}

fn send_request(sock: &OwnedFd, seq: u32, family: u8) -> Result<(), DiscoverError> {
    let req = build_request(seq, family);
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: pointers and lengths describe live, correctly sized buffers.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(diag_err("sendto(sock_diag request)", err));
        }
    }
}

fn receive_dump(sock: &OwnedFd, seq: u32, out: &mut Vec<DiagSocket>) -> Result<(), DiscoverError> {
    let mut buf = vec![0u8; RECV_BUF_LEN];
    loop {
        let len = recv_datagram(sock, &mut buf)?;
        if parse_datagram(&buf[..len], seq, out)? == Parsed::Done {
            return Ok(());
        }
    }
}

fn recv_datagram(sock: &OwnedFd, buf: &mut [u8]) -> Result<usize, DiscoverError> {
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes. MSG_TRUNC
        // makes recv return the datagram's full length, so truncation shows.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(diag_err("recv(sock_diag reply)", err));
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(malformed("reply datagram larger than the receive buffer"));
        }
        return Ok(n);
    }
}

fn malformed(what: &'static str) -> DiscoverError {
    diag_err(what, io::Error::from(io::ErrorKind::InvalidData))
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    More,
    Done,
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(off..off + 2)?.try_into().ok()?))
}

/// Walks the netlink messages of one datagram, appending sockets to `out`.
/// Messages of another sequence number (stale replies) are ignored.
pub(super) fn parse_datagram(buf: &[u8], seq: u32, out: &mut Vec<DiagSocket>) -> Result<Parsed, DiscoverError> {
    let mut off = 0;
    while buf.len() - off >= NLMSG_HDR_LEN {
        let msg_len = u32_at(buf, off).ok_or_else(|| malformed("short netlink header"))? as usize;
        if msg_len < NLMSG_HDR_LEN || msg_len > buf.len() - off {
            return Err(malformed("netlink message length out of bounds"));
        }
        let msg = &buf[off..off + msg_len];
        let msg_type = u16_at(msg, 4).unwrap_or(0);
        let msg_seq = u32_at(msg, 8).unwrap_or(0);
        let payload = &msg[NLMSG_HDR_LEN..];
        if msg_seq == seq {
            match msg_type {
                NLMSG_DONE => {
                    // Since Linux 4.x NLMSG_DONE of a dump carries an int status.
                    return match u32_at(payload, 0).map(|v| v as i32) {
                        Some(e) if e < 0 => Err(diag_err("sock_diag dump", io::Error::from_raw_os_error(-e))),
                        _ => Ok(Parsed::Done),
                    };
                }
                NLMSG_ERROR => {
                    // struct nlmsgerr: int error, then the offending header.
                    let errno = u32_at(payload, 0)
                        .map(|v| v as i32)
                        .ok_or_else(|| malformed("short NLMSG_ERROR"))?;
                    if errno != 0 {
                        return Err(diag_err("sock_diag request", io::Error::from_raw_os_error(-errno)));
                    }
                }
                SOCK_DIAG_BY_FAMILY => out.push(parse_diag_msg(payload)?),
                _ => {}
            }
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN); the last may be unpadded.
        off += msg_len.next_multiple_of(4).min(buf.len() - off);
    }
    Ok(Parsed::More)
}

fn parse_diag_msg(payload: &[u8]) -> Result<DiagSocket, DiscoverError> {
    if payload.len() < DIAG_MSG_LEN {
        return Err(malformed("short inet_diag_msg"));
    }
    let sport = payload
        .get(MSG_SPORT..MSG_SPORT + 2)
        .ok_or_else(|| malformed("short inet_diag_msg"))?;
    let cookie_lo = u32_at(payload, MSG_COOKIE).ok_or_else(|| malformed("short inet_diag_msg"))?;
    let cookie_hi = u32_at(payload, MSG_COOKIE + 4).ok_or_else(|| malformed("short inet_diag_msg"))?;
    Ok(DiagSocket {
        cookie: u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
        // idiag_sport is in network byte order.
        local_port: u16::from_be_bytes([sport[0], sport[1]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, ty: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.extend_from_slice(&0u16.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    fn diag_msg(seq: u32, port: u16, cookie: u64) -> Vec<u8> {
        let mut m = header((NLMSG_HDR_LEN + DIAG_MSG_LEN) as u32, SOCK_DIAG_BY_FAMILY, seq);
        let mut body = vec![0u8; DIAG_MSG_LEN];
        body[0] = libc::AF_INET as u8;
        body[1] = TCP_ESTABLISHED as u8;
        body[MSG_SPORT..MSG_SPORT + 2].copy_from_slice(&port.to_be_bytes());
        body[MSG_COOKIE..MSG_COOKIE + 4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        body[MSG_COOKIE + 4..MSG_COOKIE + 8].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        m.extend(body);
        m
    }

    /// The C layouts, to check the hand-written offsets against the compiler's.
    #[repr(C)]
    struct InetDiagSockId {
        sport: u16,
        dport: u16,
        src: [u32; 4],
        dst: [u32; 4],
        ifindex: u32,
        cookie: [u32; 2],
    }
    #[repr(C)]
    struct InetDiagMsg {
        family: u8,
        state: u8,
        timer: u8,
        retrans: u8,
        id: InetDiagSockId,
        expires: u32,
        rqueue: u32,
        wqueue: u32,
        uid: u32,
        inode: u32,
    }
    #[repr(C)]
    struct InetDiagReqV2 {
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: InetDiagSockId,
    }

    #[test]
    fn offsets_match_c_layout() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<InetDiagMsg>(), DIAG_MSG_LEN);
        assert_eq!(size_of::<InetDiagReqV2>(), REQ_V2_LEN);
        assert_eq!(
            offset_of!(InetDiagMsg, id) + offset_of!(InetDiagSockId, sport),
            MSG_SPORT
        );
        assert_eq!(
            offset_of!(InetDiagMsg, id) + offset_of!(InetDiagSockId, cookie),
            MSG_COOKIE
        );
        assert_eq!(offset_of!(InetDiagReqV2, states), 4);
        assert_eq!(size_of::<libc::nlmsghdr>(), NLMSG_HDR_LEN);
    }

    #[test]
    fn request_layout() {
        let r = build_request(7, libc::AF_INET6 as u8);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u32_at(&r, 20), Some((1 << 1) | (1 << 8)));
    }

    #[test]
    fn parses_messages_and_done() {
        let mut dgram = diag_msg(3, 8080, 0x1_0000_0002);
        dgram.extend(diag_msg(99, 1, 1)); // stale sequence: ignored
        dgram.extend(diag_msg(3, 443, 5));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 3, &mut out).unwrap(), Parsed::More);
        assert_eq!(
            out,
            vec![
                DiagSocket {
                    cookie: 0x1_0000_0002,
                    local_port: 8080
                },
                DiagSocket {
                    cookie: 5,
                    local_port: 443
                }
            ]
        );
        let mut done = header(20, NLMSG_DONE, 3);
        done.extend_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_datagram(&done, 3, &mut out).unwrap(), Parsed::Done);
    }

    #[test]
    fn rejects_bad_lengths_and_reports_errors() {
        let mut out = Vec::new();
        // Length field larger than the datagram.
        let mut bad = header(500, SOCK_DIAG_BY_FAMILY, 1);
        bad.extend(vec![0u8; 40]);
        assert!(parse_datagram(&bad, 1, &mut out).is_err());
        // Length smaller than a header (would loop forever if accepted).
        assert!(parse_datagram(&header(4, SOCK_DIAG_BY_FAMILY, 1), 1, &mut out).is_err());
        // Diag message too short for an inet_diag_msg.
        let mut short = header(24, SOCK_DIAG_BY_FAMILY, 1);
        short.extend(vec![0u8; 8]);
        assert!(parse_datagram(&short, 1, &mut out).is_err());
        // NLMSG_ERROR with -EPERM.
        let mut err = header(36, NLMSG_ERROR, 1);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend(vec![0u8; 16]);
        let e = parse_datagram(&err, 1, &mut out).unwrap_err();
        assert!(
            matches!(&e, DiscoverError::SockDiag { source, .. } if source.raw_os_error() == Some(libc::EPERM)),
            "{e}"
        );
        // Trailing bytes shorter than a header are ignored, not read.
        assert_eq!(parse_datagram(&[1, 2, 3], 1, &mut out).unwrap(), Parsed::More);
        assert!(out.is_empty());
    }
}
