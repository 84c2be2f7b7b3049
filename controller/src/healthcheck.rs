//! `syncfleet-controller healthcheck`: ask this machine's controller whether it is ready, for
//! container runtimes (`HEALTHCHECK`) and images without curl. It reads the same configuration
//! layers as `serve` and sends `GET /readyz` to the port of `http_listen` on loopback; 200 is
//! ready, anything else (or nothing answering within the timeout) is not.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why the controller is not ready, as the healthcheck reports it.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error(
        "nothing answers on {addr} (http_listen): {source}; is `syncfleet-controller serve` running with this configuration?"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("GET http://{addr}/readyz failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "GET http://{addr}/readyz answered {answer:?}, not 200: the controller is not ready (its store does not answer)"
    )]
    NotReady { addr: SocketAddr, answer: String },
}

/// Where to reach a listener bound to `listen` from the same machine: an unspecified address
/// (`0.0.0.0`, `::`) is reached on the loopback address of its family.
pub fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /readyz` on the controller listening at `http_listen`; Ok with the answer's body when it
/// is 200. Each of connect, write and read is bounded by `timeout`, so a hung controller fails
/// the check instead of hanging it.
pub fn check(http_listen: SocketAddr, timeout: Duration) -> Result<String, HealthcheckError> {
    let addr = local_target(http_listen);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HealthcheckError::Connect { addr, source })?;
    let io = |source| HealthcheckError::Io { addr, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(s, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("").trim().to_string();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(body.trim().to_string())
    } else {
        Err(HealthcheckError::NotReady {
            addr,
            answer: if status_line.is_empty() {
                "no HTTP answer".into()
            } else {
                status_line
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:7080".parse().unwrap()),
            "127.0.0.1:7080".parse().unwrap()
        );
        assert_eq!(
            local_target("[::]:7080".parse().unwrap()),
            "[::1]:7080".parse().unwrap()
        );
        assert_eq!(
            local_target("10.1.2.3:7080".parse().unwrap()),
            "10.1.2.3:7080".parse().unwrap()
        );
    }

    #[test]
    fn nothing_listening_is_an_error_naming_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = check(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
