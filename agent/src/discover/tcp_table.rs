//! Parser for /proc/PID/net/tcp and /proc/PID/net/tcp6 (the socket tables of
//! that process's network namespace).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `st` column value of a listening socket (TCP_LISTEN = 10).
const STATE_LISTEN: u8 = 0x0A;

/// One row of a /proc/net/tcp{,6} table, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TcpRow {
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub state: u8,
    pub inode: u64,
}

impl TcpRow {
    pub fn is_listen(&self) -> bool {
        self.state == STATE_LISTEN
    }
}

/// Parses a whole table; the header line and malformed lines are skipped
/// (the format is the kernel's, but a truncated read must not abort discovery).
pub(super) fn parse_table(text: &str) -> impl Iterator<Item = TcpRow> + '_ {
    text.lines().filter_map(parse_line)
}

/// Parses one row:
/// `   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 ...`
/// Columns: sl, local, remote, st, tx:rx queue, tr:when, retrnsmt, uid, timeout, inode.
pub(super) fn parse_line(line: &str) -> Option<TcpRow> {
    let mut cols = line.split_whitespace();
    let _sl = cols.next()?.strip_suffix(':')?;
    let (addr, port) = cols.next()?.split_once(':')?;
    let _remote = cols.next()?;
    let state = u8::from_str_radix(cols.next()?, 16).ok()?;
    let inode = cols.nth(5)?.parse().ok()?;
    Some(TcpRow {
        local_addr: parse_hex_addr(addr)?,
        // The port is printed in host order.
        local_port: u16::from_str_radix(port, 16).ok()?,
        state,
        inode,
    })
}

/// The kernel prints addresses as the in-memory network-order bytes read as
/// native-endian 32-bit words (`%08X` each): one word for IPv4, four for IPv6.
/// So on the usual little-endian hosts 127.0.0.1 reads "0100007F".
/// Converting each word back with `to_ne_bytes` recovers the network-order bytes.
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(hex_word(hex)?.to_ne_bytes()))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&hex_word(hex.get(i * 8..i * 8 + 8)?)?.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn hex_word(hex: &str) -> Option<u32> {
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000    33        0 5151 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_ipv4_rows() {
        let rows: Vec<_> = parse_table(TCP).collect();
        assert_eq!(rows.len(), 3, "header skipped, three rows");
        assert_eq!(
            rows[0],
            TcpRow {
                local_addr: "127.0.0.1".parse().unwrap(),
                local_port: 8080,
                state: 0x0A,
                inode: 4242
            }
        );
        assert!(rows[0].is_listen());
        assert_eq!(rows[1].local_addr, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(rows[1].local_port, 80);
        assert_eq!(rows[2].state, 1);
        assert!(!rows[2].is_listen());
        assert_eq!(rows[2].inode, 5151);
    }

    #[test]
    fn parses_ipv6_rows() {
        // ::1 port 443, 2001:db8::1 port 8443, :: port 80 — as Linux/x86_64 prints them.
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9001 1 0000000000000000 100 0 0 10 0
   1: B80D0120000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9002 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9003 1 0000000000000000 100 0 0 10 0
";
        let rows: Vec<_> = parse_table(text).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].local_addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(rows[0].local_port, 443);
        assert_eq!(rows[0].inode, 9001);
        assert_eq!(rows[1].local_addr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(rows[1].local_port, 8443);
        assert_eq!(rows[2].local_addr, "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_mapped_ipv6() {
        // ::ffff:127.0.0.1 — words 0,0,FFFF0000,0100007F in native order.
        let line = "   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        let row = parse_line(line).unwrap();
        assert_eq!(row.local_addr, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("garbage"), None);
        // Truncated line (no inode column).
        assert_eq!(
            parse_line("   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000"),
            None
        );
        // Bad address width.
        assert_eq!(
            parse_line("   0: 00007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1"),
            None
        );
        // Non-hex port.
        assert_eq!(
            parse_line("   0: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1"),
            None
        );
        // A multi-byte character must not make slicing panic.
        assert_eq!(
            parse_line("   0: 00000000000000000000000000000é0:1F90 00:0 0A 0:0 0:0 0 0 0 1 1"),
            None
        );
    }
}
