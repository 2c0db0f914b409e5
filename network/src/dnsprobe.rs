//! Waits until aardvark-dns answers a newly attached container's name.
//!
//! `netavark setup` writes aardvark-dns' configuration and signals it (SIGHUP), then returns
//! without waiting: aardvark-dns 1.4 (Debian 12) closes every socket it serves and opens them
//! again on that signal, and starts from nothing for the first container of a network. A
//! container started right away could send its first lookup into that gap and get "connection
//! refused". So after setup the attaching process asks the network's server for the container's
//! own name (an A or AAAA query over UDP, from the host: the gateway is a host address) until the
//! answer names it: then the server runs with the new configuration. It gives up quietly after a
//! few seconds (a network whose server never answers is reported by the container's own lookups,
//! as podman reports it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long the probe waits for an answer before the container starts anyway.
pub(crate) const PATIENCE: Duration = Duration::from_secs(3);

/// Asks `server:53` for `name` (A if `v6` is false, else AAAA) until an answer with at least one
/// record comes back, or `patience` passed; true if it answered.
pub(crate) fn wait_answering(server: IpAddr, name: &str, v6: bool, patience: Duration) -> bool {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = (std::process::id() as u16) ^ (nanos as u16);
    // aardvark-dns 1.4 matches the lower-cased name only (a query for "Web_1" is NXDOMAIN where
    // "web_1" is answered), as resolvers send it.
    let name = name.to_ascii_lowercase();
    let Some(query) = query(id, &name, if v6 { 28 } else { 1 }) else {
        return false;
    };
    let local: IpAddr = match server {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(local, 0)) else {
        return false;
    };
    if sock.connect(SocketAddr::new(server, 53)).is_err()
        || sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if sock.send(&query).is_ok() {
            // A refused send (nothing listening yet) shows on this receive as an error.
            if let Ok(n) = sock.recv(&mut buf) {
                if answers(&buf[..n], id) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A standard query for `name` of `qtype`, recursion desired; None if `name` is no DNS name.
fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() > 12 + 255 {
        return None;
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Some(q)
}

/// Whether `msg` is the response to query `id` with no error and at least one answer record.
fn answers(msg: &[u8], id: u16) -> bool {
    msg.len() >= 12
        && msg[0..2] == id.to_be_bytes()
        && msg[2] & 0x80 != 0
        && msg[3] & 0x0f == 0
        && u16::from_be_bytes([msg[6], msg[7]]) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_labels_and_rejects_non_names() {
        let q = query(0x1234, "app.dns.podman", 1).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..17], b"\x03app\x03");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
        assert!(query(1, "a..b", 1).is_none());
        assert!(query(1, &"x".repeat(64), 1).is_none());
    }

    #[test]
    fn answer_needs_same_id_response_bit_no_error_and_a_record() {
        let mut r = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        assert!(answers(&r, 0x1234));
        assert!(!answers(&r, 0x1235));
        r[6..8].copy_from_slice(&[0, 0]);
        assert!(!answers(&r, 0x1234), "no answer record");
        r[6..8].copy_from_slice(&[0, 1]);
        r[3] = 0x83;
        assert!(!answers(&r, 0x1234), "NXDOMAIN");
        r[3] = 0x80;
        r[2] = 0x01;
        assert!(!answers(&r, 0x1234), "a query, not a response");
        assert!(!answers(&r[..11], 0x1234));
    }

    #[test]
    fn a_server_that_never_answers_is_given_up_on() {
        // 127.0.0.1:53 has no server here (or one that does not know this name).
        let t = Instant::now();
        assert!(!wait_answering(
            "127.0.0.1".parse().unwrap(),
            "no-such-container-name.invalid",
            false,
            Duration::from_millis(300)
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
