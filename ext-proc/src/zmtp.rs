//! A length-checked ZMTP 3 client (NULL mechanism) for the two socket roles the KV-event
//! subscriber uses: SUB (the engine's PUB stream) and DEALER (its ROUTER replay socket).
//!
//! Every length a peer sends is checked against [`Limits`] before anything is allocated, so
//! a hostile or broken publisher can end its own connection but never reserve memory it
//! names. Per RFC 23 (ZMTP 3.0): a 64-byte greeting each way, a `READY` command with the
//! socket type, then frames of `flags, size (1 or 8 bytes), body`. Subscriptions use the 3.0
//! form (a message `0x01 + topic`), which 3.1 publishers accept too. `PING` is answered with
//! `PONG`; other commands after the handshake are ignored; `ERROR` ends the connection.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;
/// Largest command body accepted (handshake properties, pings).
const MAX_COMMAND: u64 = 4096;

/// Size bounds for what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (all frames of one multipart message), in bytes.
    pub max_message_bytes: u64,
    /// Most frames in one message.
    pub max_frames: usize,
}

impl Limits {
    /// Messages of at most `max_message_bytes` in at most 16 frames.
    pub fn with_max_message(max_message_bytes: u64) -> Limits {
        Limits {
            max_message_bytes,
            max_frames: 16,
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    /// The socket failed or closed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer announced more than [`Limits`] allows.
    #[error("peer sent {what} of {size} bytes, above the limit of {limit}")]
    TooLarge {
        /// Frame, message or frame count.
        what: &'static str,
        /// What the peer announced.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The endpoint is not `tcp://host:port`.
    #[error("bad endpoint {0:?}: expected tcp://host:port")]
    Endpoint(String),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

/// The socket type this side plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Subscriber to a PUB or XPUB socket.
    Sub,
    /// Dealer talking to a ROUTER socket.
    Dealer,
}

impl Role {
    fn name(self) -> &'static [u8] {
        match self {
            Role::Sub => b"SUB",
            Role::Dealer => b"DEALER",
        }
    }

    fn accepts(self, peer: &[u8]) -> bool {
        match self {
            Role::Sub => peer == b"PUB" || peer == b"XPUB",
            Role::Dealer => peer == b"ROUTER" || peer == b"DEALER",
        }
    }
}

/// Host and port of a `tcp://host:port` endpoint (`[v6]` hosts unbracketed).
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16), ZmtpError> {
    let bad = || ZmtpError::Endpoint(endpoint.to_owned());
    let rest = endpoint.strip_prefix("tcp://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', '[', ']', '*']) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// One ZMTP connection.
#[derive(Debug)]
pub struct Connection {
    stream: BufStream<TcpStream>,
    limits: Limits,
}

impl Connection {
    /// Connects to `endpoint` and completes the handshake within `timeout`.
    pub async fn connect(
        endpoint: &str,
        role: Role,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Connection, ZmtpError> {
        let (host, port) = parse_endpoint(endpoint)?;
        let handshake = async {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let mut conn = Connection {
                stream: BufStream::new(tcp),
                limits,
            };
            conn.handshake(role).await?;
            Ok(conn)
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ZmtpError::Timeout)?
    }

    async fn handshake(&mut self, role: Role) -> Result<(), ZmtpError> {
        self.stream.write_all(&greeting()).await?;
        self.stream.flush().await?;
        let mut peer = [0u8; 64];
        self.stream.read_exact(&mut peer).await?;
        check_greeting(&peer)?;
        self.send_command(&ready(role)).await?;
        let (flags, body) = self.read_frame(MAX_COMMAND, "a handshake frame").await?;
        if flags & FLAG_COMMAND == 0 {
            return Err(ZmtpError::Protocol("expected READY".into()));
        }
        let (name, data) = command_parts(&body)?;
        match name {
            b"READY" => {
                let socket_type = property(data, b"Socket-Type")?
                    .ok_or_else(|| ZmtpError::Protocol("READY without Socket-Type".into()))?;
                if !role.accepts(socket_type) {
                    return Err(ZmtpError::Protocol(format!(
                        "peer socket type {} does not talk to {}",
                        String::from_utf8_lossy(socket_type),
                        String::from_utf8_lossy(role.name())
                    )));
                }
                Ok(())
            }
            b"ERROR" => Err(peer_error(data)),
            _ => Err(ZmtpError::Protocol("expected READY".into())),
        }
    }

    /// Subscribes to messages whose first frame starts with `topic` (SUB role).
    pub async fn subscribe(&mut self, topic: &[u8]) -> Result<(), ZmtpError> {
        let mut body = Vec::with_capacity(topic.len() + 1);
        body.push(1);
        body.extend_from_slice(topic);
        self.send(&[&body]).await
    }

    /// Sends one multipart message.
    pub async fn send(&mut self, frames: &[&[u8]]) -> Result<(), ZmtpError> {
        for (i, frame) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { FLAG_MORE } else { 0 };
            self.write_frame(more, frame).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    async fn send_command(&mut self, body: &[u8]) -> Result<(), ZmtpError> {
        self.write_frame(FLAG_COMMAND, body).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn write_frame(&mut self, flags: u8, body: &[u8]) -> Result<(), ZmtpError> {
        if let Ok(short) = u8::try_from(body.len()) {
            self.stream.write_all(&[flags, short]).await?;
        } else {
            self.stream.write_all(&[flags | FLAG_LONG]).await?;
            self.stream
                .write_all(&(body.len() as u64).to_be_bytes())
                .await?;
        }
        self.stream.write_all(body).await?;
        Ok(())
    }

    /// Reads one frame header and body; the body is bounded before it is allocated, by
    /// `limit` (named `what` in the error) or, for a command, by [`MAX_COMMAND`].
    async fn read_frame(
        &mut self,
        limit: u64,
        what: &'static str,
    ) -> Result<(u8, Vec<u8>), ZmtpError> {
        let flags = self.stream.read_u8().await?;
        let size = if flags & FLAG_LONG != 0 {
            self.stream.read_u64().await?
        } else {
            u64::from(self.stream.read_u8().await?)
        };
        let (limit, what) = if flags & FLAG_COMMAND != 0 {
            (limit.min(MAX_COMMAND), "a command")
        } else {
            (limit, what)
        };
        if size > limit {
            return Err(ZmtpError::TooLarge { what, size, limit });
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).await?;
        Ok((flags, body))
    }

    /// Receives the next multipart message, answering pings on the way.
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, ZmtpError> {
        let mut frames: Vec<Bytes> = Vec::new();
        let mut total = 0u64;
        loop {
            // The first frame is bounded as a frame, later ones by what the message has left.
            let what = if frames.is_empty() {
                "a frame"
            } else {
                "a message"
            };
            let remaining = self.limits.max_message_bytes - total;
            let (flags, body) = self.read_frame(remaining, what).await?;
            if flags & FLAG_COMMAND != 0 {
                if !frames.is_empty() {
                    return Err(ZmtpError::Protocol("command inside a message".into()));
                }
                self.on_command(&body).await?;
                continue;
            }
            total += body.len() as u64;
            frames.push(Bytes::from(body));
            if flags & FLAG_MORE == 0 {
                return Ok(frames);
            }
            if frames.len() >= self.limits.max_frames {
                return Err(ZmtpError::TooLarge {
                    what: "a frame count",
                    size: frames.len() as u64 + 1,
                    limit: self.limits.max_frames as u64,
                });
            }
        }
    }

    async fn on_command(&mut self, body: &[u8]) -> Result<(), ZmtpError> {
        let (name, data) = command_parts(body)?;
        match name {
            b"PING" => {
                // PING: ttl (2 bytes), context (rest); PONG echoes the context.
                let context = data.get(2..).unwrap_or_default();
                let mut pong = Vec::with_capacity(5 + context.len());
                pong.push(4);
                pong.extend_from_slice(b"PONG");
                pong.extend_from_slice(context);
                self.send_command(&pong).await
            }
            b"ERROR" => Err(peer_error(data)),
            _ => Ok(()),
        }
    }
}

/// This side's greeting: signature, version 3.0, NULL mechanism, client.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn check_greeting(g: &[u8; 64]) -> Result<(), ZmtpError> {
    if g[0] != 0xff || g[9] & 0x01 != 0x01 {
        return Err(ZmtpError::Protocol("not a ZMTP peer".into()));
    }
    if g[10] < 3 {
        return Err(ZmtpError::Protocol(format!(
            "ZMTP version {} unsupported",
            g[10]
        )));
    }
    let mechanism = &g[12..32];
    if !mechanism.starts_with(b"NULL") || mechanism[4..].iter().any(|&b| b != 0) {
        return Err(ZmtpError::Protocol(
            "peer wants a security mechanism other than NULL".into(),
        ));
    }
    Ok(())
}

/// The `READY` command body for `role`.
fn ready(role: Role) -> Vec<u8> {
    let name = b"Socket-Type";
    let value = role.name();
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.extend_from_slice(&(value.len() as u32).to_be_bytes());
    body.extend_from_slice(value);
    body
}

/// A command's name and data.
fn command_parts(body: &[u8]) -> Result<(&[u8], &[u8]), ZmtpError> {
    let bad = || ZmtpError::Protocol("malformed command".into());
    let (&len, rest) = body.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(bad());
    }
    Ok(rest.split_at(len))
}

/// Property `wanted` of a `READY` command's metadata.
fn property<'a>(mut data: &'a [u8], wanted: &[u8]) -> Result<Option<&'a [u8]>, ZmtpError> {
    let bad = || ZmtpError::Protocol("malformed READY metadata".into());
    while !data.is_empty() {
        let (&name_len, rest) = data.split_first().ok_or_else(bad)?;
        let name_len = usize::from(name_len);
        let name = rest.get(..name_len).ok_or_else(bad)?;
        let rest = &rest[name_len..];
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let value_len = u32::from_be_bytes(len_bytes) as usize;
        let value = rest
            .get(4..4usize.saturating_add(value_len))
            .ok_or_else(bad)?;
        if name.eq_ignore_ascii_case(wanted) {
            return Ok(Some(value));
        }
        data = &rest[4 + value_len..];
    }
    Ok(None)
}

fn peer_error(data: &[u8]) -> ZmtpError {
    let reason = data
        .split_first()
        .map(|(&n, r)| &r[..usize::from(n).min(r.len())])
        .unwrap_or_default();
    ZmtpError::Protocol(format!(
        "peer error: {}",
        String::from_utf8_lossy(reason)
            .chars()
            .take(200)
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("tcp://10.0.0.1:5557").unwrap(),
            ("10.0.0.1".to_owned(), 5557)
        );
        assert_eq!(
            parse_endpoint("tcp://[::1]:5557").unwrap(),
            ("::1".to_owned(), 5557)
        );
        for bad in [
            "ipc:///tmp/x",
            "tcp://*:5557",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ready_metadata_round_trips() {
        let body = ready(Role::Dealer);
        let (name, data) = command_parts(&body).unwrap();
        assert_eq!(name, b"READY");
        assert_eq!(
            property(data, b"socket-type").unwrap(),
            Some(&b"DEALER"[..])
        );
        assert_eq!(property(data, b"Identity").unwrap(), None);
        assert!(property(&data[..data.len() - 1], b"X").is_err());
    }

    /// A scripted peer: greets, sends READY as `socket_type`, then writes `then`.
    async fn peer(socket_type: &'static [u8], then: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut g = greeting();
            g[32] = 1; // as-server
            s.write_all(&g).await.unwrap();
            let mut theirs = [0u8; 64];
            s.read_exact(&mut theirs).await.unwrap();
            let mut body = vec![5];
            body.extend_from_slice(b"READY");
            body.push(11);
            body.extend_from_slice(b"Socket-Type");
            body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
            body.extend_from_slice(socket_type);
            s.write_all(&[FLAG_COMMAND, body.len() as u8])
                .await
                .unwrap();
            s.write_all(&body).await.unwrap();
            s.write_all(&then).await.unwrap();
            // Keep the socket open while the client reads.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        format!("tcp://{addr}")
    }

    fn limits() -> Limits {
        Limits::with_max_message(1024)
    }

    /// The error a SUB client gets reading `wire` from a PUB peer.
    async fn recv_error(wire: Vec<u8>) -> ZmtpError {
        let ep = peer(b"PUB", wire).await;
        let mut c = connect(&ep, 5000).await.unwrap();
        c.recv().await.unwrap_err()
    }

    async fn connect(endpoint: &str, timeout_ms: u64) -> Result<Connection, ZmtpError> {
        let timeout = Duration::from_millis(timeout_ms);
        Connection::connect(endpoint, Role::Sub, limits(), timeout).await
    }

    #[tokio::test]
    async fn messages_arrive_whole() {
        let mut wire = vec![FLAG_MORE, 1, b't', FLAG_MORE | FLAG_LONG];
        wire.extend_from_slice(&300u64.to_be_bytes());
        wire.extend_from_slice(&[7u8; 300]);
        wire.extend_from_slice(&[0, 2, b'h', b'i']);
        let ep = peer(b"PUB", wire).await;
        let mut c = connect(&ep, 5000).await.unwrap();
        c.subscribe(b"").await.unwrap();
        let msg = c.recv().await.unwrap();
        assert_eq!(msg.len(), 3);
        assert_eq!(msg[0].as_ref(), b"t");
        assert_eq!(msg[1].len(), 300);
        assert_eq!(msg[2].as_ref(), b"hi");
    }

    #[tokio::test]
    async fn a_huge_announced_frame_is_refused_before_allocation() {
        let mut wire = vec![FLAG_LONG];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = recv_error(wire).await;
        assert!(
            matches!(
                err,
                ZmtpError::TooLarge {
                    what: "a frame",
                    size: u64::MAX,
                    limit: 1024
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn message_size_and_frame_count_are_bounded() {
        // Three 400-byte frames: each under the frame limit, the message over it.
        let mut wire = Vec::new();
        for more in [FLAG_MORE, FLAG_MORE, 0] {
            wire.extend_from_slice(&[more | FLAG_LONG]);
            wire.extend_from_slice(&400u64.to_be_bytes());
            wire.extend_from_slice(&[1u8; 400]);
        }
        let err = recv_error(wire).await;
        assert!(
            matches!(
                err,
                ZmtpError::TooLarge {
                    what: "a message",
                    ..
                }
            ),
            "{err}"
        );

        let wire: Vec<u8> = std::iter::repeat_n([FLAG_MORE, 0], 100).flatten().collect();
        let err = recv_error(wire).await;
        assert!(
            matches!(
                err,
                ZmtpError::TooLarge {
                    what: "a frame count",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_peer_types_and_mechanisms_are_refused() {
        let ep = peer(b"REP", Vec::new()).await;
        let err = connect(&ep, 5000).await.unwrap_err();
        assert!(err.to_string().contains("socket type REP"), "{err}");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut g = greeting();
            g[12..17].copy_from_slice(b"CURVE");
            s.write_all(&g).await.unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let err = connect(&format!("tcp://{addr}"), 5000).await.unwrap_err();
        assert!(err.to_string().contains("NULL"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_the_handshake_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let err = connect(&format!("tcp://{addr}"), 200).await.unwrap_err();
        assert!(matches!(err, ZmtpError::Timeout));
    }

    #[tokio::test]
    async fn pings_are_answered_and_skipped() {
        let mut wire = vec![FLAG_COMMAND, 9, 4];
        wire.extend_from_slice(b"PING");
        wire.extend_from_slice(&[0, 10, b'c', b'x']);
        wire.extend_from_slice(&[0, 1, b'm']);
        let ep = peer(b"XPUB", wire).await;
        let mut c = connect(&ep, 5000).await.unwrap();
        let msg = c.recv().await.unwrap();
        assert_eq!(msg, vec![Bytes::from_static(b"m")]);
    }
}
