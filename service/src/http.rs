//! Serving HTTP (and the WebSockets upgraded from it) with the limits `axum::serve` does
//! not set: a connection that does not finish its request headers within
//! `header_read_timeout` is closed, and past `max_connections` new connections are
//! closed at once instead of queueing. Both the shard's HTTP port and the gateway use it.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What one HTTP server allows.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest time from accepting a connection (or finishing a request on it) to having
    /// the next request's headers.
    pub header_read_timeout: Duration,
    /// Connections open at once, WebSockets excluded (they are counted by whoever
    /// serves them).
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: at the connection limit");
            drop(stream);
            continue;
        };
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo(peer))));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, %err, "connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: HttpLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/who",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.ip().to_string()
            }),
        );
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_headers_are_cut_and_complete_requests_answered() {
        let (addr, stop) = server(HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 8,
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The virtual clock runs past the timeout: the connection is closed.
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the slow connection was not closed");
        let mut quick = tokio::net::TcpStream::connect(addr).await.unwrap();
        quick
            .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        quick.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with("127.0.0.1"),
            "the peer address reaches handlers: {answer}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn past_the_connection_limit_connections_are_closed_at_once() {
        let (addr, stop) = server(HttpLimits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 2,
        })
        .await;
        // Two kept-alive connections, each answered once: both hold their permit.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 512];
            while !String::from_utf8_lossy(&seen).ends_with("127.0.0.1") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            held.push(stream);
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = third
            .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        drop(held);
        stop.cancel();
    }
}
