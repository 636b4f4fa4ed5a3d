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

/// What the watchdog of one connection reads. No clock is read per request: the watchdog
/// counts its looks, and the wait for headers is timed in looks.
#[derive(Default)]
struct Watched {
    /// Bytes that crossed the connection either way (to tell an idle connection).
    bytes: std::sync::atomic::AtomicU64,
    /// Bytes written to the client (a response may still be going out after hyper let its
    /// body go).
    written: std::sync::atomic::AtomicU64,
    waits: std::sync::Mutex<Waits>,
}

/// What a connection is waiting for. Under one lock: a request body may be let go on another
/// thread (by a worker that goes on after its request timed out) as the next request begins.
struct Waits {
    /// Requests being answered: from their headers until hyper has taken their response
    /// body's last frame (its bytes may still be going out: see `Watched::written`).
    answering: u32,
    /// Request bodies held (by a handler, or a worker that goes on).
    bodies: u32,
    /// The watchdog's looks at the headers so far, plus one.
    looks: u64,
    /// `looks` when the connection began waiting for a request's headers: at its opening, or
    /// when nothing was in progress any more, or a response's last bytes went out. 0 while it
    /// does not wait.
    head_since: u64,
}

impl Default for Waits {
    fn default() -> Self {
        // A new connection waits for its first request's headers.
        Waits {
            answering: 0,
            bodies: 0,
            looks: 1,
            head_since: 1,
        }
    }
}

impl Watched {
    /// Bytes written to the client.
    fn wrote(&self, written: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes.fetch_add(written as u64, Relaxed);
        self.written.fetch_add(written as u64, Relaxed);
    }

    fn waits(&self) -> std::sync::MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request whose headers were read: in progress until its body is let go and its
    /// response's body is in hyper's hands (the guards for both).
    fn begin(self: &Arc<Self>) -> (InProgress, InProgress) {
        let mut waits = self.waits();
        waits.answering += 1;
        waits.bodies += 1;
        waits.head_since = 0;
        let part = |part| InProgress {
            watched: self.clone(),
            part,
        };
        (part(Part::Body), part(Part::Answer))
    }

    /// Whether no request is being answered (for the idle timeout: a request body that a
    /// worker waits for after its request timed out keeps the connection alive only while its
    /// bytes come).
    fn answering_none(&self) -> bool {
        self.waits().answering == 0
    }

    /// A look at the headers, one every half timeout, `written` being the bytes written
    /// at the look before: whether the connection has waited for them since before the look
    /// before last, so at least a timeout (and at most one and a half). Bytes written since
    /// the last look restart the wait (a response still going out).
    fn head_late(&self, written: &mut u64) -> bool {
        let now_written = self.written.load(std::sync::atomic::Ordering::Relaxed);
        let mut waits = self.waits();
        let look = waits.looks;
        waits.looks += 1;
        if now_written != *written {
            *written = now_written;
            if waits.head_since != 0 {
                waits.head_since = look;
            }
            return false;
        }
        waits.head_since != 0 && look.saturating_sub(waits.head_since) >= 2
    }
}

/// Which part of a request an [`InProgress`] stands for.
#[derive(Clone, Copy)]
enum Part {
    Body,
    Answer,
}

/// Part of a request in progress on a connection, for as long as it lives.
struct InProgress {
    watched: Arc<Watched>,
    part: Part,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut waits = self.watched.waits();
        match self.part {
            Part::Body => waits.bodies -= 1,
            Part::Answer => waits.answering -= 1,
        }
        if waits.bodies == 0 && waits.answering == 0 {
            // Nothing in progress any more: the connection waits for the next headers.
            waits.head_since = waits.looks;
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's or a response's body, counted as in progress until it is dropped: a
    /// request's when its handler lets it go, a response's once hyper has taken its last
    /// frame.
    struct Tracked<B> {
        #[pin]
        body: B,
        in_progress: InProgress,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that did not all arrive within its request's time limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not all arrive within the request's time limit")]
pub(crate) struct BodyTimedOut;

pin_project_lite::pin_project! {
    /// A request body that fails if it is not all there within `timeout` of the first wait for
    /// it (not of the request's start: a request may wait for a worker slot first). Without it, a body still coming when its request was answered 504 would hold
    /// its worker (and its worker slot) and its connection for as long as the client
    /// trickles it.
    pub(crate) struct Deadline<B> {
        #[pin]
        body: B,
        timeout: std::time::Duration,
        // Started when the body first has to be waited for.
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> Deadline<B> {
    /// `body`, failing if it is not all there within `timeout` of the first wait for it.
    pub(crate) fn new(body: B, timeout: std::time::Duration) -> Self {
        Deadline {
            body,
            timeout,
            timer: None,
        }
    }
}

impl<B> axum::body::HttpBody for Deadline<B>
where
    B: axum::body::HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::BoxError>>> {
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, telling its watchdog what crosses it.
struct Counted {
    stream: tokio::net::TcpStream,
    watched: Arc<Watched>,
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
            self.watched
                .bytes
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
            self.watched.wrote(*written);
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
            self.watched.wrote(*written);
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

/// The shortest wait between two looks of a connection's watchdog (a zero timeout must not
/// make it spin).
const MIN_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

/// Serves `dispatch` on `listener` until `stop`, then lets the requests in progress finish.
///
/// HTTP/1.1 through hyper, with what a server facing the Internet needs and `axum::serve`
/// does not set: at most `max_connections` connections at once (more wait in the listen
/// backlog), a connection that waits longer than `header_read_timeout` for a request's
/// headers is dropped (slowloris; it waits from its opening, and again once a request's body
/// is let go and its response's last bytes went out, as with hyper's own header timeout), and
/// one idle for `idle_timeout` (no request being answered, no byte either way) is closed, then
/// dropped if it is still there and idle at the next look (hyper waits for a request body that
/// stopped coming, or a client does not read its response).
///
/// Both are watched by a task per connection that looks every half timeout, rather than by
/// hyper's header timeout, which resets a timer for every request of a kept-alive
/// connection: a connection goes between one and one and a half timeouts after its wait began.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    dispatch: Dispatch,
    limits: Limits,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below times the headers.
    builder
        .header_read_timeout(None::<std::time::Duration>)
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
        let watched = Arc::new(Watched::default());
        let io = hyper_util::rt::TokioIo::new(Counted {
            stream,
            watched: watched.clone(),
        });
        let service = {
            let (dispatch, watched) = (dispatch.clone(), watched.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                // Its headers are read; it is in progress until its body is let go and its
                // response sent.
                let (reading, responding) = watched.begin();
                let request = request.map(|body| {
                    Body::new(Tracked {
                        body,
                        in_progress: reading,
                    })
                });
                // A `map`, not an `async` block, which would hold the dispatcher's future
                // twice (captured, then awaited): hyper writes it whole for every request.
                futures_util::FutureExt::map(dispatch.handle(request), move |response| {
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                        body,
                        in_progress: responding,
                    }))
                })
            })
        };
        let (builder, stop) = (builder.clone(), stop.clone());
        let (idle_timeout, head_timeout) = (limits.idle_timeout, limits.header_read_timeout);
        connections.spawn(async move {
            let _slot = slot;
            // With upgrades: a websocket takes the connection over from HTTP (and this
            // watchdog ends with the HTTP connection).
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let mut closing = false;
            // Idle when neither a byte nor a request moved between two looks, half the idle
            // timeout apart: closed after between one and one and a half idle timeouts, and
            // dropped half an idle timeout later if it is still there and nothing moved.
            let look = (idle_timeout / 2).max(MIN_LOOK);
            // Headers begun more than their timeout ago, seen at a look every half timeout:
            // the connection is dropped (closed, without an answer), as hyper would.
            let head_look_every = (head_timeout / 2).max(MIN_LOOK);
            let now = tokio::time::Instant::now();
            let (mut idle_at, mut head_at) = (now + look, now + head_look_every);
            // One timer for both looks, and the wait for the stop made once: every wake of
            // the connection (each request, each write) polls what the loop waits on.
            let watchdog = tokio::time::sleep_until(idle_at.min(head_at));
            let stopping = stop.cancelled();
            tokio::pin!(watchdog, stopping);
            let (mut seen, mut written) = (u64::MAX, 0);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut connection => break,
                    () = &mut stopping, if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = &mut watchdog => {
                        let now = tokio::time::Instant::now();
                        if now >= head_at {
                            if watched.head_late(&mut written) {
                                tracing::debug!("closed an HTTP connection whose request headers were late");
                                break;
                            }
                            head_at = now + head_look_every;
                        }
                        if now >= idle_at {
                            let bytes = watched.bytes.load(Ordering::Relaxed);
                            if bytes == seen && watched.answering_none() {
                                if closing {
                                    // Closing (idle, or stopping), and still nothing moves:
                                    // hyper waits for a request body that stopped coming, or
                                    // the client does not read its response. Dropped.
                                    break;
                                }
                                connection.as_mut().graceful_shutdown();
                                closing = true;
                            }
                            seen = bytes;
                            idle_at = now + look;
                        }
                        watchdog.as_mut().reset(idle_at.min(head_at));
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
