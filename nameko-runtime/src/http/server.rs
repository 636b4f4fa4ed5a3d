//! The HTTP server: hyper's HTTP/1.1 with the limits a server facing the Internet needs.

use super::*;

/// What the HTTP server allows its clients: from [`Config`]'s `http_*` settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: std::time::Duration,
    pub(crate) idle_timeout: std::time::Duration,
    pub(crate) max_connections: usize,
}

impl Limits {
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            header_read_timeout: config.http_header_read_timeout,
            idle_timeout: config.http_idle_timeout,
            max_connections: config.http_max_connections.max(1),
        }
    }
}

/// A connection's socket, counting the bytes that cross it (to tell an idle connection).
struct Counted {
    stream: tokio::net::TcpStream,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes
                .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.stream).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(written)) = &polled {
            self.bytes
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        if let std::task::Poll::Ready(Ok(written)) = &polled {
            self.bytes
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `dispatch` on `listener` until `stop`, then lets the requests in progress finish.
///
/// HTTP/1.1 through hyper, with what a server facing the Internet needs and `axum::serve`
/// does not set: at most `max_connections` connections at once (more wait in the listen
/// backlog), a client that takes longer than `header_read_timeout` to send a request's
/// headers is disconnected (slowloris), and so is a connection idle for `idle_timeout` (no
/// request in progress, no byte either way).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    dispatch: Dispatch,
    limits: Limits,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Dropped with this future (a kill aborts it): the connections go with it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, a connection reset before it was accepted: go on.
                    tracing::warn!(%error, "could not accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let bytes = Arc::new(AtomicU64::new(0));
        let in_progress = Arc::new(AtomicUsize::new(0));
        let io = hyper_util::rt::TokioIo::new(Counted {
            stream,
            bytes: bytes.clone(),
        });
        let service = {
            let (dispatch, in_progress) = (dispatch.clone(), in_progress.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                /// Counts a request in progress for as long as its future lives.
                struct InProgress(Arc<AtomicUsize>);
                impl Drop for InProgress {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                in_progress.fetch_add(1, Ordering::Relaxed);
                let counted = InProgress(in_progress.clone());
                let handled = dispatch.clone().handle(request.map(Body::new));
                async move {
                    let response = handled.await;
                    drop(counted);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let (builder, stop) = (builder.clone(), stop.clone());
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            // With upgrades: a websocket takes the connection over from HTTP.
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let mut closing = false;
            // Idle when neither a byte nor a request moved between two looks, half the idle
            // timeout apart: closed after between one and one and a half idle timeouts.
            let look = idle_timeout / 2;
            let mut seen = u64::MAX;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut connection => break,
                    _ = stop.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tokio::time::sleep(look), if !closing => {
                        let now = bytes.load(Ordering::Relaxed);
                        if now == seen && in_progress.load(Ordering::Relaxed) == 0 {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        seen = now;
                    }
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Parses Nameko's `[host:]port` address.
pub(crate) fn parse_address(address: &str) -> Result<SocketAddr, Error> {
    let full = if address.contains(':') {
        address.to_owned()
    } else {
        format!("0.0.0.0:{address}")
    };
    full.parse().map_err(|_| {
        Error::Config(format!(
            "WEB_SERVER_ADDRESS `{address}` is not of the form [host:]port"
        ))
    })
}
