//! The reply side of a client: one reply queue (`rpc.reply-<owner>-<uuid>`) consumed for every
//! call in flight, each reply handed to its call by correlation id; a client that owns its
//! connection reconnects to the same queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::RpcError;
use crate::protocol;
use crate::transport::{
    self, Consumer, Delivery, ExchangeSpec, InlineAcks, InlineConsumer, InlineHandler, QueueSpec,
    SharedTransport, TransportError, amqp::AmqpOptions,
};

/// Hands a call its outcome: the reply's body, or why there is none. The error is boxed: the
/// channel holds the outcome, and a smaller one takes a smaller allocation for every call.
pub(super) type ReplySender = oneshot::Sender<Result<Vec<u8>, Box<RpcError>>>;

/// The calls waiting for a reply, by correlation id, and the clock that ends those that wait
/// too long.
///
/// A call does not arm a timer of its own: one sweeper task per reply queue sleeps until the
/// earliest deadline it knows of and ends the calls past theirs with [`RpcError::Timeout`].
/// Calls of one client share one timeout, so a new call's deadline is almost never earlier
/// than the sweeper's, and the sweeper is woken about once per timeout, not once per call.
#[derive(Default)]
pub(super) struct Pending {
    calls: Mutex<Calls>,
    /// Wakes the sweeper for a deadline earlier than the one it sleeps until.
    sweep: Notify,
}

#[derive(Default)]
struct Calls {
    /// Callers by correlation id (a random UUID, as a number: looking a reply up copies no
    /// string).
    waiting: HashMap<u128, Waiter, foldhash::fast::RandomState>,
    /// When the sweeper looks next: the earliest deadline it knows of (that call may have
    /// ended since), or `None` while it waits for a call.
    next_sweep: Option<Instant>,
    /// The latest deadline a call was given.
    latest: Option<Instant>,
}

struct Waiter {
    reply: ReplySender,
    deadline: Instant,
    timeout: Duration,
}

impl Pending {
    /// Registers a call that ends with a timeout at `deadline` unless its reply or another
    /// outcome came first.
    pub(super) fn insert(
        &self,
        correlation_id: u128,
        reply: ReplySender,
        deadline: Instant,
        timeout: Duration,
    ) {
        let earlier = {
            let mut calls = lock(&self.calls);
            calls.waiting.insert(
                correlation_id,
                Waiter {
                    reply,
                    deadline,
                    timeout,
                },
            );
            if calls.latest.is_none_or(|latest| deadline > latest) {
                calls.latest = Some(deadline);
            }
            let earlier = calls.next_sweep.is_none_or(|at| deadline < at);
            if earlier {
                calls.next_sweep = Some(deadline);
            }
            earlier
        };
        if earlier {
            self.sweep.notify_one();
        }
    }

    /// Hands a reply to the call waiting for it (by its correlation id); drops a reply that no
    /// call waits for (late, after the call timed out, or not for this client).
    fn hand_over(&self, reply: &mut Delivery) {
        let correlation_id = reply.properties.correlation_id.as_deref();
        let waiter = correlation_id
            .and_then(|id| uuid::Uuid::try_parse(id).ok())
            .and_then(|id| self.remove(id.as_u128()));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(Ok(std::mem::take(&mut reply.body)));
            }
            None => tracing::debug!(
                correlation_id = correlation_id.unwrap_or(""),
                "Unknown correlation id: dropping a late or foreign reply"
            ),
        }
    }

    /// Takes a call out, to hand it its outcome.
    pub(super) fn remove(&self, correlation_id: u128) -> Option<ReplySender> {
        lock(&self.calls)
            .waiting
            .remove(&correlation_id)
            .map(|waiter| waiter.reply)
    }

    /// Ends every call waiting with `error()`.
    pub(super) fn fail_all(&self, error: impl Fn() -> RpcError) -> usize {
        let waiting: Vec<_> = lock(&self.calls).waiting.drain().collect();
        let ended = waiting.len();
        for (_, waiter) in waiting {
            let _ = waiter.reply.send(Err(Box::new(error())));
        }
        ended
    }

    /// Ends the calls past their deadline at `now`; when the sweeper looks next.
    ///
    /// That is the earliest deadline of the calls still waiting or, when none waits, the
    /// latest deadline a call was given, if it is still to come: the sweeper then wakes once
    /// more for nothing, rather than being woken by the next call of a client whose calls
    /// each end before the sweeper looks (which would be once per call).
    fn time_out(&self, now: Instant) -> Option<Instant> {
        let mut calls = lock(&self.calls);
        let expired: Vec<_> = calls
            .waiting
            .extract_if(|_, waiter| waiter.deadline <= now)
            .map(|(_, waiter)| waiter)
            .collect();
        let next = match calls.waiting.values().map(|waiter| waiter.deadline).min() {
            Some(earliest) => Some(earliest),
            None => calls.latest.filter(|&latest| latest > now),
        };
        calls.next_sweep = next;
        drop(calls);
        for waiter in expired {
            let _ = waiter
                .reply
                .send(Err(Box::new(RpcError::Timeout(waiter.timeout))));
        }
        next
    }

    /// The sweeper: ends calls at their deadlines, until `stop`.
    async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut next = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.sweep.notified() => {}
                _ = &mut sleep, if next.is_some() => {}
            }
            next = self.time_out(Instant::now());
            if let Some(at) = next {
                sleep.as_mut().reset(at);
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a reply listener ends when the broker ends its consumer.
const CANCELLED_BY_THE_BROKER: &str = "reply consumer was cancelled by the broker";

/// The first wait before reconnecting; it doubles after each failed attempt.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to reconnect: well within a call's timeout, so that
/// calls waiting for the connection get it soon after the broker is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// How long one attempt to reconnect (connection, handshakes, declarations) may take.
const RECONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The state of a client's connection, as calls see it.
#[derive(Clone)]
pub(super) enum Link {
    /// Connected: calls publish on this transport, with this reply queue's routing key as
    /// their `reply_to`.
    Up {
        transport: SharedTransport,
        reply_to: Arc<str>,
    },
    /// The connection was lost and the client is reconnecting; the text says why.
    Down(String),
    /// The client cannot send any more: it was closed, or lost a connection it cannot renew.
    Closed(String),
}

/// Where one reply queue lives: enough to declare it again on a new connection.
struct ReplyQueue {
    exchange: String,
    owner: String,
    queue: String,
    routing_key: String,
}

impl ReplyQueue {
    /// A new queue (`rpc.reply-<owner>-<uuid>`) on `exchange`.
    fn new(exchange: &str, owner: &str) -> ReplyQueue {
        let routing_key = uuid::Uuid::new_v4().to_string();
        ReplyQueue {
            exchange: exchange.to_owned(),
            owner: owner.to_owned(),
            queue: protocol::reply_queue_name(owner, &routing_key),
            routing_key,
        }
    }

    /// Declares the queue (idempotent: a reconnect finds the same queue, and any replies that
    /// reached it meanwhile, thanks to its `x-expires`) and starts consuming it: replies are
    /// handed to their calls as the transport receives them where it can (the embedded
    /// broker), otherwise by the listener's task.
    async fn consume(
        &self,
        transport: &SharedTransport,
        pending: &Arc<Pending>,
    ) -> Result<ReplyConsumer, TransportError> {
        transport
            .declare_exchange(&ExchangeSpec::durable_topic(&self.exchange))
            .await?;
        transport
            .declare_queue(&QueueSpec {
                expires: Some(Duration::from_millis(u64::from(
                    protocol::REPLY_QUEUE_EXPIRES_MS,
                ))),
                ..QueueSpec::durable(self.queue.clone())
            })
            .await?;
        transport
            .bind_queue(&self.queue, &self.exchange, &self.routing_key)
            .await?;
        let pending = pending.clone();
        let handler: InlineHandler = Arc::new(move |mut reply| pending.hand_over(&mut reply));
        match transport.consume_inline(&self.queue, InlineAcks::None, handler) {
            Some(consuming) => consuming.await.map(ReplyConsumer::Inline),
            None => transport
                .consume(&self.queue, 0)
                .await
                .map(ReplyConsumer::Stream),
        }
    }
}

/// A reply queue's consumer.
enum ReplyConsumer {
    /// Each reply handed to its call as the transport receives it.
    Inline(InlineConsumer),
    /// Replies the listener's task reads and hands over.
    Stream(Consumer),
}

impl ReplyConsumer {
    async fn close(self) {
        match self {
            ReplyConsumer::Inline(consumer) => drop(consumer),
            ReplyConsumer::Stream(consumer) => consumer.close().await,
        }
    }
}

/// Consumes one reply queue and hands each reply to the call waiting for it; for a client that
/// owns its connection, reconnects when the connection is lost.
pub(super) struct ReplyListener {
    pub(super) pending: Arc<Pending>,
    pub(super) link: watch::Receiver<Link>,
    _stop: DropGuard,
}

impl ReplyListener {
    pub(super) async fn start(
        transport: SharedTransport,
        exchange: &str,
        owner: &str,
        reconnect: Option<(String, AmqpOptions)>,
    ) -> Result<ReplyListener, TransportError> {
        let queue = ReplyQueue::new(exchange, owner);
        let pending: Arc<Pending> = Arc::default();
        let consumer = queue.consume(&transport, &pending).await?;
        let (link_tx, link) = watch::channel(Link::Up {
            transport: transport.clone(),
            reply_to: queue.routing_key.as_str().into(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(pending.clone().sweep(stop.clone()));
        tokio::spawn(
            Listening {
                queue,
                pending: pending.clone(),
                link: link_tx,
                stop: stop.clone(),
                reconnect,
            }
            .run(transport, consumer),
        );
        Ok(ReplyListener {
            pending,
            link,
            _stop: stop.drop_guard(),
        })
    }
}

/// The reply listener's task.
struct Listening {
    queue: ReplyQueue,
    pending: Arc<Pending>,
    link: watch::Sender<Link>,
    stop: CancellationToken,
    /// Where to connect again when the connection is lost, if the client owns it.
    reconnect: Option<(String, AmqpOptions)>,
}

impl Listening {
    async fn run(mut self, mut transport: SharedTransport, mut consumer: ReplyConsumer) {
        let reason = loop {
            let reason = self.deliver(&mut consumer).await;
            consumer.close().await;
            let Some(reason) = reason else {
                break "client closed".to_owned();
            };
            if transport.is_closed() {
                tracing::debug!(%reason, "reply listener ended with its connection");
                break reason;
            }
            let Some((uri, options)) = &self.reconnect else {
                tracing::error!(%reason, "RPC replies can no longer be received");
                break reason;
            };
            tracing::warn!(%reason, "lost the broker connection; reconnecting");
            self.link.send_replace(Link::Down(reason));
            match self.reconnect(uri, options).await {
                Some((new_transport, new_consumer, new_queue)) => {
                    transport.close().await;
                    transport = new_transport;
                    consumer = new_consumer;
                    if let Some(new_queue) = new_queue {
                        self.replace_queue(new_queue, &transport);
                    } else {
                        // Calls in flight keep waiting: their replies are in the queue, or
                        // will be.
                        tracing::info!(
                            broker = %transport.describe(),
                            "reconnected; calls in flight go on waiting for their replies"
                        );
                    }
                    self.link.send_replace(Link::Up {
                        transport: transport.clone(),
                        reply_to: self.queue.routing_key.as_str().into(),
                    });
                }
                None => break "client closed".to_owned(),
            }
        };
        self.link.send_replace(Link::Closed(reason.clone()));
        self.pending
            .fail_all(|| RpcError::Transport(TransportError::Connection(reason.clone())));
        if self.reconnect.is_some() {
            // The client owns this connection.
            transport.close().await;
        }
    }

    /// Replaces a reply queue the broker lost (with the cluster node that held it): the calls
    /// waiting on it will never have their replies, so they end at once with
    /// [`RpcError::ReplyLost`].
    fn replace_queue(&mut self, queue: ReplyQueue, transport: &SharedTransport) {
        let lost = std::mem::replace(&mut self.queue, queue);
        let ended = self
            .pending
            .fail_all(|| RpcError::ReplyLost(lost.queue.clone()));
        tracing::warn!(
            broker = %transport.describe(),
            lost = %lost.queue,
            new = %self.queue.queue,
            calls_in_flight = ended,
            "reconnected, but the reply queue was lost with the node that held it: consuming a new one; calls in flight end with ReplyLost"
        );
    }

    /// Hands replies to their calls until the consumer ends (`Some(reason)`) or the client
    /// closes (`None`).
    async fn deliver(&self, consumer: &mut ReplyConsumer) -> Option<String> {
        let consumer = match consumer {
            ReplyConsumer::Stream(consumer) => consumer,
            // The transport hands the replies over; this waits for the end.
            ReplyConsumer::Inline(consumer) => {
                return tokio::select! {
                    _ = self.stop.cancelled() => None,
                    _ = consumer.ended() => Some(CANCELLED_BY_THE_BROKER.to_owned()),
                };
            }
        };
        // One wait for the close, registered once; looked at after the replies ready (the
        // flag first, so that a steady stream of replies does not hide it).
        let stopped = self.stop.cancelled();
        tokio::pin!(stopped);
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            let delivery = tokio::select! {
                biased;
                next = consumer.next() => next,
                _ = &mut stopped => return None,
            };
            match delivery {
                Some(Ok(mut delivery)) => {
                    self.pending.hand_over(&mut delivery);
                    // The caller has its reply. This crate's transports settle at once (on
                    // RabbitMQ the acknowledgement is queued on the channel); another
                    // transport's acknowledgement runs on a task of its own, so that the next
                    // reply does not wait for it.
                    let mut ack = delivery.ack_at_once();
                    match futures_util::poll!(&mut ack) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            tracing::warn!(error = %e, "could not acknowledge a reply");
                        }
                        Poll::Pending => {
                            tokio::spawn(async move {
                                if let Err(e) = ack.await {
                                    tracing::warn!(error = %e, "could not acknowledge a reply");
                                }
                            });
                        }
                    }
                }
                Some(Err(e)) => return Some(format!("reply consumer failed: {e}")),
                None => return Some(CANCELLED_BY_THE_BROKER.to_owned()),
            }
        }
    }

    /// Connects again, with a doubling delay between attempts, until it works or the client
    /// closes (`None`). The reply queue is consumed again where the broker still has it; where
    /// it refuses it (the queue's node is down: RabbitMQ answers `NOT_FOUND`, "home node ... is
    /// down or inaccessible"), a new queue is declared and returned with the connection.
    async fn reconnect(
        &self,
        uri: &str,
        options: &AmqpOptions,
    ) -> Option<(SharedTransport, ReplyConsumer, Option<ReplyQueue>)> {
        let mut delay = FIRST_RECONNECT_DELAY;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            let attempt = async {
                let transport = transport::connect_with_options(uri, options).await?;
                let consumed = match self.queue.consume(&transport, &self.pending).await {
                    Ok(consumer) => Ok((consumer, None)),
                    Err(TransportError::NotFound(reason)) if !transport.connection_lost() => {
                        tracing::warn!(
                            queue = %self.queue.queue,
                            %reason,
                            "the broker no longer has the reply queue"
                        );
                        let queue = ReplyQueue::new(&self.queue.exchange, &self.queue.owner);
                        match queue.consume(&transport, &self.pending).await {
                            Ok(consumer) => Ok((consumer, Some(queue))),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                match consumed {
                    Ok((consumer, queue)) => Ok((transport, consumer, queue)),
                    Err(e) => {
                        transport.close().await;
                        Err(e)
                    }
                }
            };
            let outcome = tokio::select! {
                _ = self.stop.cancelled() => return None,
                outcome = tokio::time::timeout(RECONNECT_ATTEMPT_TIMEOUT, attempt) => outcome
                    .unwrap_or_else(|_| Err(TransportError::Connection(format!(
                        "no connection within {RECONNECT_ATTEMPT_TIMEOUT:?}"
                    )))),
            };
            match outcome {
                Ok(connected) => return Some(connected),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "could not reconnect");
                    self.link.send_replace(Link::Down(e.to_string()));
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn timed_out(
        outcome: Result<Result<Vec<u8>, Box<RpcError>>, TryRecvError>,
    ) -> Option<Duration> {
        match outcome {
            Ok(Err(error)) => match *error {
                RpcError::Timeout(timeout) => Some(timeout),
                _ => None,
            },
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_ends_each_call_at_its_deadline_and_no_other() {
        let pending: Arc<Pending> = Arc::default();
        let stop = CancellationToken::new();
        tokio::spawn(pending.clone().sweep(stop.clone()));
        let start = Instant::now();
        let call = |id: u128, millis: u64| {
            let (tx, rx) = oneshot::channel();
            let timeout = Duration::from_millis(millis);
            pending.insert(id, tx, Instant::now() + timeout, timeout);
            rx
        };
        let mut first = call(1, 100);
        let mut answered = call(2, 200);
        let mut later = call(3, 300);

        tokio::time::sleep_until(start + Duration::from_millis(99)).await;
        assert!(matches!(first.try_recv(), Err(TryRecvError::Empty)));
        tokio::time::sleep_until(start + Duration::from_millis(101)).await;
        assert_eq!(
            timed_out(first.try_recv()),
            Some(Duration::from_millis(100))
        );
        // A call answered before its deadline keeps its answer.
        let reply = pending.remove(2).expect("call 2 waits");
        let _ = reply.send(Ok(b"answer".to_vec()));
        tokio::time::sleep_until(start + Duration::from_millis(250)).await;
        assert_eq!(
            answered.try_recv().ok().and_then(Result::ok),
            Some(b"answer".to_vec())
        );
        assert!(matches!(later.try_recv(), Err(TryRecvError::Empty)));

        // A shorter timeout than the one the sweeper sleeps for wakes it.
        let mut impatient = call(4, 10);
        tokio::time::sleep_until(start + Duration::from_millis(261)).await;
        assert_eq!(
            timed_out(impatient.try_recv()),
            Some(Duration::from_millis(10))
        );
        assert!(matches!(later.try_recv(), Err(TryRecvError::Empty)));
        tokio::time::sleep_until(start + Duration::from_millis(301)).await;
        assert_eq!(
            timed_out(later.try_recv()),
            Some(Duration::from_millis(300))
        );

        // After a quiet spell with nothing waiting, a new call still times out.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut after_a_while = call(5, 50);
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert_eq!(
            timed_out(after_a_while.try_recv()),
            Some(Duration::from_millis(50))
        );
        stop.cancel();
    }
}
