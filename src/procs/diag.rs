//! The TCP listeners of one network namespace, from the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2`, see sock_diag(7)).
//! For a socket in `LISTEN` the kernel reports `idiag_wqueue` = the backlog the listener got
//! (`min(listen() backlog, net.core.somaxconn at listen time)`) and `idiag_rqueue` = the
//! connections waiting in its accept queue now.
//!
//! The messages are built and parsed here byte by byte (all fields in host byte order except
//! the ports and addresses of `inet_diag_sockid`, which are big-endian), so the layouts are
//! written out once and unit-tested on fixed bytes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};
use nix::sys::time::TimeVal;

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family u8, protocol u8, ext u8, pad u8, states u32, then an
/// `inet_diag_sockid` (48 bytes).
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport be16, dport be16, src [be32; 4], dst [be32; 4], if u32,
/// cookie [u32; 2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans (u8 each), `inet_diag_sockid`, then
/// expires, rqueue, wqueue, uid, inode (u32 each).
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IPPROTO_TCP: u8 = 6;
/// `TCP_LISTEN` of the kernel's TCP states (net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// How long one dump may wait for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag: {0}")]
    Io(#[from] io::Error),
    #[error("sock_diag: the kernel answered error {0}")]
    Kernel(i32),
    #[error("sock_diag: malformed answer: {0}")]
    Malformed(&'static str),
}

/// One TCP socket in `LISTEN`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listener {
    pub address: IpAddr,
    pub port: u16,
    /// The listen backlog the kernel applies (`idiag_wqueue`).
    pub backlog: u32,
    /// Connections waiting to be accepted now (`idiag_rqueue`).
    pub queue: u32,
    /// The socket's inode, as in `/proc/<pid>/fd/N -> socket:[inode]`.
    #[serde(skip)]
    pub inode: u32,
}

/// The dump request for TCP listeners of `family` (`AF_INET` or `AF_INET6`).
pub fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_V2_LEN] {
    let mut b = [0u8; NLMSG_HDRLEN + REQ_V2_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_V2_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: to the kernel. Then inet_diag_req_v2:
    b[16] = family;
    b[17] = IPPROTO_TCP;
    // idiag_ext 0 (no extra attributes), pad 0.
    b[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // inet_diag_sockid all zero: every socket of the family.
    b
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What one buffer of the answer held: the listeners, and whether the dump ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub listeners: Vec<Listener>,
    pub done: bool,
}

/// Parses one datagram of the answer (one or more netlink messages).
pub fn parse(buf: &[u8]) -> Result<Parsed, DiagError> {
    let mut out = Parsed::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_ne(buf, at) as usize;
        let kind = u16_ne(buf, at + 4);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(DiagError::Malformed("a message longer than the datagram"));
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => {
                out.done = true;
                return Ok(out);
            }
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(DiagError::Malformed("a short error message"));
                }
                let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                if errno != 0 {
                    return Err(DiagError::Kernel(errno));
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                if body.len() < DIAG_MSG_LEN {
                    return Err(DiagError::Malformed("a short inet_diag_msg"));
                }
                if u32::from(body[1]) == TCP_LISTEN {
                    out.listeners.push(listener(body));
                }
            }
            _ => {}
        }
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        at += (len + 3) & !3;
    }
    Ok(out)
}

fn listener(m: &[u8]) -> Listener {
    let family = m[0];
    let id = &m[4..4 + SOCKID_LEN];
    let port = u16::from_be_bytes([id[0], id[1]]);
    let src = &id[4..20];
    let address = if i32::from(family) == libc::AF_INET6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(src);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    };
    let tail = 4 + SOCKID_LEN;
    Listener {
        address,
        port,
        queue: u32_ne(m, tail + 4),
        backlog: u32_ne(m, tail + 8),
        inode: u32_ne(m, tail + 16),
    }
}

/// A `NETLINK_SOCK_DIAG` socket. It answers for the network namespace it was created in, so it
/// is created by a thread inside the namespace and kept.
pub fn socket() -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    socket::setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0),
    )?;
    Ok(fd)
}

/// Every TCP listener (IPv4 and IPv6) of the socket's network namespace.
pub fn listeners(fd: &OwnedFd) -> Result<Vec<Listener>, DiagError> {
    let mut all = vec![];
    let mut buf = vec![0u8; 32 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = request(family, seq);
        socket::sendto(
            fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        loop {
            let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(io::Error::from)?;
            if n == 0 {
                return Err(DiagError::Malformed("an empty answer"));
            }
            let p = parse(&buf[..n])?;
            all.extend(p.listeners);
            if p.done {
                break;
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_an_nlmsghdr_and_an_inet_diag_req_v2() {
        let r = request(libc::AF_INET6 as u8, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r, 0), 72, "nlmsg_len");
        assert_eq!(u16_ne(&r, 4), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_ne(&r, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_ne(&r, 8), 7, "seq");
        assert_eq!(u32_ne(&r, 12), 0, "pid: the kernel");
        assert_eq!((r[16], r[17], r[18], r[19]), (10, 6, 0, 0), "AF_INET6, TCP");
        assert_eq!(u32_ne(&r, 20), 1 << 10, "states: LISTEN only");
        assert!(r[24..].iter().all(|b| *b == 0), "any socket id");
    }

    /// One `inet_diag_msg` as the kernel sends it.
    fn msg(family: u8, state: u8, port: u16, addr: [u8; 16], q: (u32, u32), inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + DIAG_MSG_LEN];
        m[0..4].copy_from_slice(&((NLMSG_HDRLEN + DIAG_MSG_LEN) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[6..8].copy_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        let b = NLMSG_HDRLEN;
        m[b] = family;
        m[b + 1] = state;
        m[b + 4..b + 6].copy_from_slice(&port.to_be_bytes());
        m[b + 8..b + 24].copy_from_slice(&addr);
        let tail = b + 4 + SOCKID_LEN;
        m[tail + 4..tail + 8].copy_from_slice(&q.0.to_ne_bytes());
        m[tail + 8..tail + 12].copy_from_slice(&q.1.to_ne_bytes());
        m[tail + 12..tail + 16].copy_from_slice(&999u32.to_ne_bytes());
        m[tail + 16..tail + 20].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    fn done() -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + 4];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m
    }

    #[test]
    fn listeners_of_both_families_and_the_end_of_the_dump() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let mut buf = msg(2, 10, 6390, v4, (3, 128), 4242);
        buf.extend(msg(10, 10, 6390, v6, (0, 511), 4243));
        // A socket in another state (ESTABLISHED) is skipped.
        buf.extend(msg(2, 1, 40000, v4, (0, 0), 1));
        let p = parse(&buf).unwrap();
        assert!(!p.done);
        assert_eq!(
            p.listeners,
            [
                Listener {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 6390,
                    backlog: 128,
                    queue: 3,
                    inode: 4242
                },
                Listener {
                    address: "::1".parse().unwrap(),
                    port: 6390,
                    backlog: 511,
                    queue: 0,
                    inode: 4243
                }
            ]
        );
        assert_eq!(
            parse(&done()).unwrap(),
            Parsed {
                listeners: vec![],
                done: true
            }
        );
    }

    #[test]
    fn errors_and_truncation() {
        let mut e = done();
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(matches!(parse(&e), Err(DiagError::Kernel(-1))));
        let m = msg(2, 10, 1, [0; 16], (0, 0), 1);
        assert!(matches!(parse(&m[..40]), Err(DiagError::Malformed(_))));
    }
}
