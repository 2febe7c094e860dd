//! The gRPC port's connections: accepted with TCP_NODELAY, each classified by its first byte
//! as TLS or plaintext HTTP/2 (see [`crate::tls`]), handshaken off the accept loop.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::debug;

use crate::tls::ServerTls;

/// First byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken and waiting for the gRPC server to take them.
const READY_BACKLOG: usize = 256;

/// One accepted connection of the gRPC port.
#[derive(Debug)]
pub enum GrpcConn {
    /// Plaintext HTTP/2.
    Plain(TcpStream),
    /// HTTP/2 over TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl GrpcConn {
    fn tcp(&self) -> &TcpStream {
        match self {
            GrpcConn::Plain(s) => s,
            GrpcConn::Tls(s) => s.get_ref().0,
        }
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            GrpcConn::Plain(s) => s.is_write_vectored(),
            GrpcConn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_flush(cx),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The gRPC port's accepted connections, as tonic's `serve_with_incoming` takes them; the
/// accept loop stops when the stream is dropped (or [`Incoming::abort`]).
pub struct Incoming {
    ready: mpsc::Receiver<GrpcConn>,
    accept: JoinHandle<()>,
}

impl Incoming {
    /// Starts accepting on `listener`. Without `tls` every connection is plaintext.
    pub fn start(listener: TcpListener, tls: Option<ServerTls>) -> Incoming {
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let accept = tokio::spawn(accept_loop(listener, tls, tx));
        Incoming { ready, accept }
    }

    /// Stops accepting.
    pub fn abort(&self) {
        self.accept.abort();
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Stream for Incoming {
    type Item = Result<GrpcConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<ServerTls>, ready: mpsc::Sender<GrpcConn>) {
    let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.config.clone()));
    let plaintext_too = tls.as_ref().is_none_or(|t| t.plaintext_too);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %err, "gRPC accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            if ready.send(GrpcConn::Plain(tcp)).await.is_err() {
                return;
            }
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(tcp, acceptor, plaintext_too))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = ready.send(conn).await;
                }
                Ok(Err(err)) => debug!(%peer, error = %err, "gRPC connection refused"),
                Err(_) => debug!(%peer, "gRPC connection sent nothing in time"),
            }
        });
    }
}

/// Tells TLS from plaintext by the first byte and completes the TLS handshake.
async fn classify(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    plaintext_too: bool,
) -> io::Result<GrpcConn> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before any byte",
        ));
    }
    if first[0] == TLS_HANDSHAKE {
        let stream = acceptor.accept(tcp).await?;
        return Ok(GrpcConn::Tls(Box::new(stream)));
    }
    if plaintext_too {
        return Ok(GrpcConn::Plain(tcp));
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        "plaintext connection on a TLS-only port (tls.mode: required)",
    ))
}

/// Binds `addr`; an unspecified IPv6 address (`[::]`, the default, both families on Linux)
/// falls back to `0.0.0.0` on hosts without IPv6.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(err) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            debug!(error = %err, "IPv6 unavailable for the {what} address, binding {v4}");
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("binding the {what} address {v4}"))
        }
        Err(err) => Err(err).with_context(|| format!("binding the {what} address {addr}")),
    }
}
