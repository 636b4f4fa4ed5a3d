//! The embedded broker: RabbitMQ's semantics, in process, with no server.
//!
//! Topic exchanges with `*`/`#` bindings, named queues with the same declare checks as
//! RabbitMQ, competing consumers served round-robin, prefetch limits, manual acks, mandatory
//! publishes, and redelivery (with `redelivered = true`) of everything a consumer received but
//! did not settle when it goes away. Queues declared `auto_delete` or `exclusive` are deleted as
//! soon as their last consumer leaves; queues declared with an expiry (`x-expires`), as on
//! RabbitMQ, once unused for that long: no consumer, and not declared again.
//!
//! (Over 600 lines with its unit tests; the broker itself is about 590 lines, one state
//! behind one lock, kept in one file.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    Acker, Consumer, ConsumerSource, Delivery, ExchangeSpec, OutgoingMessage, Properties,
    QueueSpec, ReturnedMessage, SharedTransport, Transport, TransportError, topic_matches,
};

/// An in-process broker. Clone it freely: clones share the same exchanges and queues.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBroker({})", self.describe())
    }
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    next_consumer: u64,
    /// When unused queues run out of their expiry, earliest first. An entry is void when its
    /// queue was used since ([`Queue::expires_at`] moved or cleared).
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
}

struct Exchange {
    spec: ExchangeSpec,
    bindings: Vec<(String, String)>,
}

struct Queue {
    spec: QueueSpec,
    ready: VecDeque<Stored>,
    consumers: Vec<Slot>,
    next: usize,
    /// When the queue, declared with an expiry and unused since, is to be deleted.
    expires_at: Option<Instant>,
}

#[derive(Clone)]
struct Stored {
    exchange: String,
    routing_key: String,
    redelivered: bool,
    properties: Properties,
    body: Vec<u8>,
}

impl Stored {
    fn new(message: OutgoingMessage) -> Self {
        Stored {
            exchange: message.exchange,
            routing_key: message.routing_key,
            redelivered: false,
            properties: message.properties,
            body: message.body,
        }
    }
}

struct Slot {
    id: u64,
    prefetch: u16,
    unsettled: usize,
    tx: mpsc::UnboundedSender<Stored>,
}

impl MemoryBroker {
    /// A new, empty broker of its own.
    pub fn new() -> Self {
        MemoryBroker::default()
    }

    /// The broker of this name in this process, created on first use; `memory://name` URIs
    /// connect to it, so services and clients in one process find each other.
    pub fn named(name: &str) -> SharedTransport {
        static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut brokers = lock(BROKERS.get_or_init(Default::default));
        let broker = brokers
            .entry(name.to_owned())
            .or_insert_with(|| MemoryBroker {
                name: Arc::from(name),
                state: Arc::default(),
            });
        Arc::new(broker.clone())
    }

    /// Number of messages waiting in a queue (not counting those delivered and unsettled).
    pub fn queue_len(&self, queue: &str) -> Option<usize> {
        let mut state = lock(&self.state);
        state.expire();
        state.queues.get(queue).map(|q| q.ready.len())
    }

    /// Whether a queue exists.
    pub fn has_queue(&self, queue: &str) -> bool {
        let mut state = lock(&self.state);
        state.expire();
        state.queues.contains_key(queue)
    }

    fn publish_now(&self, message: OutgoingMessage) -> Result<(), TransportError> {
        let unroutable = |message: OutgoingMessage| {
            if message.mandatory {
                Err(TransportError::Unroutable {
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                })
            } else {
                Ok(())
            }
        };
        let mut state = lock(&self.state);
        state.expire();
        let State {
            exchanges, queues, ..
        } = &mut *state;
        if message.exchange.is_empty() {
            // The default exchange: the routing key names the queue.
            let Some(queue) = queues.get_mut(&message.routing_key) else {
                return unroutable(message);
            };
            queue.ready.push_back(Stored::new(message));
            queue.dispatch();
            return Ok(());
        }
        let exchange = exchanges.get(&message.exchange).ok_or_else(|| {
            TransportError::NotFound(format!("no exchange '{}'", message.exchange))
        })?;
        // The queues bound for the key, borrowed from the bindings (this runs at every
        // publish); several get their copies in name order.
        let mut targets: Vec<&str> = Vec::new();
        for (key, queue) in &exchange.bindings {
            if topic_matches(key, &message.routing_key) && !targets.contains(&queue.as_str()) {
                targets.push(queue);
            }
        }
        targets.sort_unstable();
        let Some(last) = targets.len().checked_sub(1) else {
            return unroutable(message);
        };
        // One copy per queue, the last one the message itself.
        let mut message = Some(message);
        for (i, name) in targets.iter().enumerate() {
            let (Some(queue), Some(original)) = (queues.get_mut(*name), message.as_ref()) else {
                continue;
            };
            let stored = if i == last {
                message.take().map(Stored::new)
            } else {
                Some(Stored::new(original.clone()))
            };
            if let Some(stored) = stored {
                queue.ready.push_back(stored);
                queue.dispatch();
            }
        }
        Ok(())
    }

    fn settle(state: &Weak<Mutex<State>>, queue: &str, consumer: u64, requeue: Option<Stored>) {
        let Some(state) = state.upgrade() else { return };
        let mut state = lock(&state);
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        if let Some(slot) = q.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.unsettled = slot.unsettled.saturating_sub(1);
        }
        if let Some(mut message) = requeue {
            message.redelivered = true;
            q.ready.push_front(message);
        }
        q.dispatch();
    }

    fn remove_consumer(
        state: &Weak<Mutex<State>>,
        queue: &str,
        consumer: u64,
        returned: Vec<Stored>,
    ) {
        let Some(state) = state.upgrade() else { return };
        let mut state = lock(&state);
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        q.consumers.retain(|s| s.id != consumer);
        for mut message in returned.into_iter().rev() {
            message.redelivered = true;
            q.ready.push_front(message);
        }
        if !q.consumers.is_empty() {
            q.dispatch();
        } else if q.spec.auto_delete || q.spec.exclusive {
            state.delete_queue(queue);
        } else {
            state.start_expiry(queue);
        }
    }
}

impl State {
    fn delete_queue(&mut self, name: &str) {
        self.queues.remove(name);
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|(_, q)| q != name);
        }
    }

    /// Starts the expiry of a queue now unused, if it was declared with one (RabbitMQ renews
    /// the lease of an unused queue at every declaration, and when its last consumer leaves).
    fn start_expiry(&mut self, name: &str) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        // An expiry beyond what the clock can say never comes.
        queue.expires_at = queue
            .spec
            .expires
            .and_then(|expires| Instant::now().checked_add(expires));
        if let Some(at) = queue.expires_at {
            self.expiries.push(Reverse((at, name.to_owned())));
        }
    }

    /// Deletes the queues whose expiry ran out while unused. Called before every look at the
    /// queues (publishes included), so an expired queue is never seen; with no expiry running,
    /// it does not even read the clock.
    fn expire(&mut self) {
        if self.expiries.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.expiries.peek()
            && *at <= now
        {
            let Some(Reverse((_, name))) = self.expiries.pop() else {
                return;
            };
            let expired = self.queues.get(&name).is_some_and(|q| {
                q.consumers.is_empty() && q.expires_at.is_some_and(|at| at <= now)
            });
            if expired {
                self.delete_queue(&name);
            }
        }
    }
}

impl Queue {
    /// Hands ready messages to consumers with room, round-robin.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let n = self.consumers.len();
            let Some(offset) = (0..n).find(|i| {
                let slot = &self.consumers[(self.next + i) % n];
                slot.prefetch == 0 || slot.unsettled < usize::from(slot.prefetch)
            }) else {
                return;
            };
            let index = (self.next + offset) % n;
            self.next = (index + 1) % n;
            let Some(message) = self.ready.pop_front() else {
                return;
            };
            let slot = &mut self.consumers[index];
            match slot.tx.send(message) {
                Ok(()) => slot.unsettled += 1,
                Err(mpsc::error::SendError(message)) => {
                    // The consumer is gone; its own drop will clean the slot up.
                    self.ready.push_front(message);
                    self.consumers.remove(index);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The broker's state stays consistent between statements, so a panic elsewhere while the
    // lock was held leaves nothing half-done worth refusing to continue for.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Settles one delivery. The broker keeps no copy of a delivered message: the delivery hands
/// it over ([`Acker::take_back`]) when it is settled or dropped, and it is kept only to be
/// requeued (rejected with `requeue`, or dropped before it settled).
struct MemoryAcker {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    consumer: u64,
    settled: bool,
    returned: Option<Stored>,
}

/// The future of a settlement, which the embedded broker does at once: zero-sized, so boxing
/// it allocates nothing.
struct Settled;

impl std::future::Future for Settled {
    type Output = Result<(), TransportError>;
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

impl MemoryAcker {
    fn settle(&mut self, requeue: bool) {
        if !std::mem::replace(&mut self.settled, true) {
            let message = if requeue { self.returned.take() } else { None };
            MemoryBroker::settle(&self.state, &self.queue, self.consumer, message);
        }
    }
}

impl Acker for MemoryAcker {
    fn ack(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        self.settle(false);
        Settled.boxed()
    }

    fn reject(&mut self, requeue: bool) -> BoxFuture<'_, Result<(), TransportError>> {
        self.settle(requeue);
        Settled.boxed()
    }

    fn take_back(&mut self, message: ReturnedMessage) {
        self.returned = Some(Stored {
            exchange: message.exchange,
            routing_key: message.routing_key,
            redelivered: true,
            properties: message.properties,
            body: message.body,
        });
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        // Dropped unsettled (its delivery handed the message back first): requeued.
        self.settle(true);
    }
}

struct MemoryConsumer {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Stored>,
    cancelled: bool,
}

impl MemoryConsumer {
    fn detach(&mut self) {
        if self.cancelled {
            return;
        }
        self.cancelled = true;
        self.rx.close();
        let mut returned = Vec::new();
        while let Ok(message) = self.rx.try_recv() {
            returned.push(message);
        }
        MemoryBroker::remove_consumer(&self.state, &self.queue, self.id, returned);
    }
}

impl ConsumerSource for MemoryConsumer {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery, TransportError>>> {
        if self.cancelled {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|message| {
            message.map(|m| {
                let acker = MemoryAcker {
                    state: self.state.clone(),
                    queue: self.queue.clone(),
                    consumer: self.id,
                    settled: false,
                    returned: None,
                };
                Ok(Delivery::new(
                    m.exchange,
                    m.routing_key,
                    m.redelivered,
                    m.properties,
                    m.body,
                    Box::new(acker),
                ))
            })
        })
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        self.detach();
        async {}.boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.detach();
        async {}.boxed()
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Transport for MemoryBroker {
    fn declare_exchange(&self, spec: &ExchangeSpec) -> BoxFuture<'_, Result<(), TransportError>> {
        let result = {
            let mut state = lock(&self.state);
            match state.exchanges.get(&spec.name) {
                Some(existing) if existing.spec != *spec => {
                    Err(TransportError::PreconditionFailed(format!(
                        "exchange '{}' exists with other flags",
                        spec.name
                    )))
                }
                Some(_) => Ok(()),
                None => {
                    state.exchanges.insert(
                        spec.name.clone(),
                        Exchange {
                            spec: spec.clone(),
                            bindings: Vec::new(),
                        },
                    );
                    Ok(())
                }
            }
        };
        async move { result }.boxed()
    }

    fn declare_queue(&self, spec: &QueueSpec) -> BoxFuture<'_, Result<(), TransportError>> {
        let result = {
            let mut state = lock(&self.state);
            state.expire();
            let result = match state.queues.get(&spec.name) {
                Some(existing) if existing.spec != *spec => {
                    Err(TransportError::PreconditionFailed(format!(
                        "queue '{}' exists with other flags or arguments",
                        spec.name
                    )))
                }
                Some(_) => Ok(()),
                None => {
                    state.queues.insert(
                        spec.name.clone(),
                        Queue {
                            spec: spec.clone(),
                            ready: VecDeque::new(),
                            consumers: Vec::new(),
                            next: 0,
                            expires_at: None,
                        },
                    );
                    Ok(())
                }
            };
            if result.is_ok()
                && state
                    .queues
                    .get(&spec.name)
                    .is_some_and(|q| q.consumers.is_empty())
            {
                state.start_expiry(&spec.name);
            }
            result
        };
        async move { result }.boxed()
    }

    fn bind_queue<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        let result = {
            let mut state = lock(&self.state);
            state.expire();
            if !state.queues.contains_key(queue) {
                Err(TransportError::NotFound(format!("no queue '{queue}'")))
            } else {
                match state.exchanges.get_mut(exchange) {
                    None => Err(TransportError::NotFound(format!(
                        "no exchange '{exchange}'"
                    ))),
                    Some(ex) => {
                        let binding = (binding_key.to_owned(), queue.to_owned());
                        if !ex.bindings.contains(&binding) {
                            ex.bindings.push(binding);
                        }
                        Ok(())
                    }
                }
            }
        };
        async move { result }.boxed()
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), TransportError>> {
        let result = self.publish_now(message);
        async move { result }.boxed()
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Consumer, TransportError>> {
        let result = {
            let mut state = lock(&self.state);
            state.expire();
            state.next_consumer += 1;
            let id = state.next_consumer;
            match state.queues.get_mut(queue) {
                None => Err(TransportError::NotFound(format!("no queue '{queue}'"))),
                Some(q) => {
                    // In use: no expiry runs.
                    q.expires_at = None;
                    let (tx, rx) = mpsc::unbounded_channel();
                    q.consumers.push(Slot {
                        id,
                        prefetch,
                        unsettled: 0,
                        tx,
                    });
                    q.dispatch();
                    Ok(Consumer::new(Box::new(MemoryConsumer {
                        state: Arc::downgrade(&self.state),
                        queue: Arc::from(queue),
                        id,
                        rx,
                        cancelled: false,
                    })))
                }
            }
        };
        async move { result }.boxed()
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn is_closed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn brokers_of_one_name_share_their_queues() {
        let a = MemoryBroker::named("shared-by-name");
        let b = MemoryBroker::named("shared-by-name");
        a.declare_queue(&QueueSpec::durable("q")).await.unwrap();
        let mut consumer = b.consume("q", 0).await.unwrap();
        a.publish(OutgoingMessage {
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: true,
            properties: Properties::default(),
            body: b"hi".to_vec(),
        })
        .await
        .unwrap();
        assert_eq!(consumer.next().await.unwrap().unwrap().body, b"hi");
        assert!(
            MemoryBroker::named("another-name")
                .consume("q", 0)
                .await
                .is_err()
        );
    }

    fn to_key(exchange: &str) -> OutgoingMessage {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: "key".into(),
            mandatory: true,
            properties: Properties::default(),
            body: b"kept".to_vec(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expiring_queues_outlive_their_last_consumer_by_their_expiry() {
        let broker = MemoryBroker::new();
        let spec = QueueSpec {
            expires: Some(Duration::from_secs(300)),
            ..QueueSpec::durable("reply")
        };
        broker
            .declare_exchange(&ExchangeSpec::durable_topic("ex"))
            .await
            .unwrap();
        broker.declare_queue(&spec).await.unwrap();
        broker.bind_queue("reply", "ex", "key").await.unwrap();
        let consumer = broker.consume("reply", 0).await.unwrap();
        // In use, the queue stays however long.
        tokio::time::advance(Duration::from_secs(1000)).await;
        drop(consumer);
        // Unused, it stays for its expiry, messages and bindings with it.
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(broker.has_queue("reply"));
        broker.publish(to_key("ex")).await.unwrap();
        assert_eq!(broker.queue_len("reply"), Some(1));
        // A consumer coming back finds them, and starts the expiry again when it leaves.
        let mut consumer = broker.consume("reply", 0).await.unwrap();
        consumer.next().await.unwrap().unwrap().ack().await.unwrap();
        drop(consumer);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(broker.has_queue("reply"));
        // So does a declaration.
        broker.declare_queue(&spec).await.unwrap();
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(broker.has_queue("reply"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!broker.has_queue("reply"));
        assert!(matches!(
            broker.publish(to_key("ex")).await,
            Err(TransportError::Unroutable { .. })
        ));
        // Declared again, it is a new, empty queue; never consumed, it expires too.
        broker.declare_queue(&spec).await.unwrap();
        assert_eq!(broker.queue_len("reply"), Some(0));
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(!broker.has_queue("reply"));
    }

    #[tokio::test]
    async fn auto_delete_queues_go_with_their_last_consumer() {
        let broker = MemoryBroker::new();
        let spec = QueueSpec {
            auto_delete: true,
            expires: Some(Duration::from_secs(300)),
            ..QueueSpec::durable("events")
        };
        broker.declare_queue(&spec).await.unwrap();
        let consumer = broker.consume("events", 0).await.unwrap();
        drop(consumer);
        assert!(!broker.has_queue("events"));
    }

    #[tokio::test]
    async fn messages_wait_for_a_consumer() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&QueueSpec::durable("q"))
            .await
            .unwrap();
        for body in [b"1", b"2"] {
            let message = OutgoingMessage {
                exchange: String::new(),
                routing_key: "q".into(),
                mandatory: false,
                properties: Properties::default(),
                body: body.to_vec(),
            };
            broker.publish(message).await.unwrap();
        }
        assert_eq!(broker.queue_len("q"), Some(2));
        let mut consumer = broker.consume("q", 1).await.unwrap();
        let first = consumer.next().await.unwrap().unwrap();
        assert_eq!(broker.queue_len("q"), Some(1));
        first.ack().await.unwrap();
        assert_eq!(consumer.next().await.unwrap().unwrap().body, b"2");
    }
}
