//! The embedded broker: RabbitMQ's semantics, in process, with no server.
//!
//! Direct, fanout, topic and headers exchanges, named queues with the same declare checks as RabbitMQ,
//! competing consumers served round-robin (also inline consumers, handed each message as it is
//! routed: [`Transport::consume_inline`]), prefetch limits, manual acks, mandatory publishes,
//! and redelivery (with `redelivered = true`) of everything a consumer received but did not
//! settle when it goes away. Queues declared `auto_delete` or `exclusive` are deleted as soon as
//! their last consumer leaves; queues declared with an expiry (`x-expires`), as on RabbitMQ,
//! once unused for that long: no consumer, and not declared again. Queue arguments as RabbitMQ
//! has them: priorities (`x-max-priority`: a higher priority first, FIFO within one), message
//! expiry (`x-message-ttl` and a message's `expiration`, the lesser; a message expires at the
//! head of its queue, or when its time comes if the queue is idle) and dead-lettering
//! (`x-dead-letter-exchange`/`-routing-key`: rejected and expired messages are published there
//! with an `x-death` header).
//!
//! (Over 900 lines with its unit tests; one state behind one lock, kept in one file for now.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::protocol::Headers;

use super::{
    Consumer, ConsumerSource, Delivery, ExchangeSpec, ExchangeType, InlineAcks, InlineConsumer,
    InlineHandler, OutgoingMessage, Properties, Publishing, QueueSpec, ReturnedMessage, Settler,
    SharedTransport, Transport, TransportError, Unpublished,
};

/// An in-process broker. Clone it freely: clones share the same exchanges and queues.
#[derive(Clone)]
pub struct MemoryBroker {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::with_name(Arc::from(""))
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBroker({})", self.describe())
    }
}

struct State {
    /// The state itself, for the timers that expire messages of idle queues.
    me: Weak<Mutex<State>>,
    exchanges: FastMap<String, Exchange>,
    queues: FastMap<String, Queue>,
    next_consumer: u64,
    /// When unused queues run out of their expiry, earliest first. An entry is void when its
    /// queue was used since ([`Queue::expires_at`] moved or cleared).
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
    /// Messages handed to inline consumers under the lock, for their handlers to run once it
    /// is released ([`Locked`]).
    handed: Handed,
}

/// Messages for inline consumers' handlers, in the order they were routed (the first without
/// a list: most of the time there is one).
#[derive(Default)]
struct Handed {
    first: Option<(InlineHandler, Delivery)>,
    more: Vec<(InlineHandler, Delivery)>,
}

impl Handed {
    fn push(&mut self, handler: &InlineHandler, delivery: Delivery) {
        if self.first.is_none() {
            self.first = Some((handler.clone(), delivery));
        } else {
            self.more.push((handler.clone(), delivery));
        }
    }
}

/// The broker's state, locked. When it is released, the inline consumers' handlers run with
/// what was handed to them meanwhile: outside the lock, so that they may use the broker.
struct Locked<'a>(Option<MutexGuard<'a, State>>);

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.0.as_deref().expect("locked until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_deref_mut().expect("locked until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut state) = self.0.take() else {
            return;
        };
        if state.handed.first.is_none() {
            return;
        }
        // Not while a panic unwinds: a handler's own panic would abort the process. Their
        // messages go back to their queues, and are not handed over again now: a delivery
        // dropped unsettled would come straight back here.
        if std::thread::panicking() {
            let handed = std::mem::take(&mut state.handed);
            state.put_back(handed);
            return;
        }
        // Taken apart rather than moved whole: a delivery is large, and each move copies it.
        let first = state.handed.first.take();
        let more = std::mem::take(&mut state.handed.more);
        drop(state);
        if let Some((handler, delivery)) = first {
            handler(delivery);
        }
        for (handler, delivery) in more {
            handler(delivery);
        }
    }
}

fn lock_state(state: &Mutex<State>) -> Locked<'_> {
    Locked(Some(lock(state)))
}

/// The maps looked up several times for each message: a fast hasher (names are the
/// application's own; foldhash is still seeded per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Exchange {
    spec: ExchangeSpec,
    bindings: Vec<Binding>,
}

#[derive(PartialEq)]
struct Binding {
    key: String,
    /// The key's shape, read once at the binding rather than at each message.
    pattern: KeyPattern,
    /// Shared with the routing of each message (a count, not a copy).
    queue: Arc<str>,
    arguments: Headers,
}

/// The shape of a binding key, for a topic exchange.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyPattern {
    /// No wildcard: routes on equality.
    Literal,
    /// `<prefix>.*` with no wildcard in the prefix (an RPC queue's `<service>.*`): one word
    /// after the prefix and its dot (the prefix's length).
    OneWordAfter(usize),
    /// Any other pattern, matched word by word.
    Other,
}

impl KeyPattern {
    fn of(key: &str) -> KeyPattern {
        match key.strip_suffix(".*") {
            _ if !key.contains(['*', '#']) => KeyPattern::Literal,
            Some(prefix) if !prefix.contains(['*', '#']) => KeyPattern::OneWordAfter(prefix.len()),
            _ => KeyPattern::Other,
        }
    }

    /// Whether `routing_key` matches `key` (whose pattern this is) on a topic exchange.
    fn matches(self, key: &str, routing_key: &str) -> bool {
        match self {
            KeyPattern::Literal => key == routing_key,
            KeyPattern::OneWordAfter(prefix) => {
                let (key, routing_key) = (key.as_bytes(), routing_key.as_bytes());
                routing_key.len() > prefix
                    && routing_key[..=prefix] == key[..=prefix]
                    && !routing_key[prefix + 1..].contains(&b'.')
            }
            KeyPattern::Other => super::topic_matches(key, routing_key),
        }
    }
}

struct Queue {
    spec: QueueSpec,
    ready: VecDeque<Stored>,
    consumers: Vec<Slot>,
    next: usize,
    /// When the queue, declared with an expiry and unused since, is to be deleted.
    expires_at: Option<Instant>,
    /// When the timer that expires its messages while it is idle fires next, if one runs.
    message_timer: Option<Instant>,
}

#[derive(Clone)]
struct Stored {
    exchange: Arc<str>,
    routing_key: String,
    redelivered: bool,
    properties: Properties,
    body: Vec<u8>,
    /// Its priority in a priority queue (0 elsewhere).
    priority: u8,
    /// When it expires, if it does.
    expires_at: Option<Instant>,
    /// How many times it came back unsettled (a quorum queue's delivery count).
    delivery_count: u32,
}

impl Stored {
    fn new(message: OutgoingMessage) -> Self {
        Stored {
            exchange: message.exchange,
            routing_key: message.routing_key,
            redelivered: false,
            properties: message.properties,
            body: message.body,
            priority: 0,
            expires_at: None,
            delivery_count: 0,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The message delivered to `consumer`, to be settled against it.
    fn delivered_to(self, consumer: &Arc<ConsumerRef>) -> Delivery {
        let acker = MemoryAcker {
            consumer: consumer.clone(),
            priority: self.priority,
            expires_at: self.expires_at,
            delivery_count: self.delivery_count,
        };
        Delivery::settled_by(
            self.exchange,
            self.routing_key,
            self.redelivered,
            self.properties,
            self.body,
            Settler::Memory(acker),
        )
    }
}

/// How a delivery was settled.
enum Settlement {
    Ack,
    Requeue(Stored),
    /// Rejected without requeue: dead-lettered where the queue says.
    Reject(Stored),
}

struct Slot {
    id: u64,
    prefetch: u16,
    unsettled: usize,
    sink: Sink,
}

/// Where a consumer's messages go.
enum Sink {
    /// The channel of a [`MemoryConsumer`]: deliveries it settles.
    Channel(mpsc::UnboundedSender<Stored>),
    /// An inline consumer's handler, called as a message is routed; its deliveries settle
    /// against `acked` if it has manual acknowledgements. The sender is dropped with the slot,
    /// which tells the consumer it ended.
    Inline {
        handler: InlineHandler,
        acked: Option<Arc<ConsumerRef>>,
        _ended: oneshot::Sender<()>,
    },
}

impl MemoryBroker {
    /// A new, empty broker of its own.
    pub fn new() -> Self {
        MemoryBroker::default()
    }

    fn with_name(name: Arc<str>) -> Self {
        MemoryBroker {
            name,
            state: Arc::new_cyclic(|me| {
                Mutex::new(State {
                    me: me.clone(),
                    exchanges: FastMap::default(),
                    queues: FastMap::default(),
                    next_consumer: 0,
                    expiries: BinaryHeap::new(),
                    handed: Handed::default(),
                })
            }),
        }
    }

    /// The broker of this name in this process, created on first use; `memory://name` URIs
    /// connect to it, so services and clients in one process find each other.
    pub fn named(name: &str) -> SharedTransport {
        static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut brokers = lock(BROKERS.get_or_init(Default::default));
        let broker = brokers
            .entry(name.to_owned())
            .or_insert_with(|| MemoryBroker::with_name(Arc::from(name)));
        Arc::new(broker.clone())
    }

    /// Number of messages waiting in a queue (not counting those delivered and unsettled).
    pub fn queue_len(&self, queue: &str) -> Option<usize> {
        let mut state = lock_state(&self.state);
        state.expire();
        state.dispatch(queue);
        state.queues.get(queue).map(|q| q.ready.len())
    }

    /// Whether a queue exists.
    pub fn has_queue(&self, queue: &str) -> bool {
        let mut state = lock_state(&self.state);
        state.expire();
        state.queues.contains_key(queue)
    }

    fn publish_now(&self, message: OutgoingMessage) -> Result<(), Box<Unpublished>> {
        let mut state = lock_state(&self.state);
        state.expire();
        state.route(message)
    }

    fn settle(state: &Weak<Mutex<State>>, queue: &str, consumer: u64, settlement: Settlement) {
        let Some(state) = state.upgrade() else { return };
        let mut locked = lock_state(&state);
        let state = &mut *locked;
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        if let Some(slot) = q.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.unsettled = slot.unsettled.saturating_sub(1);
        }
        match settlement {
            // The common case, on the queue at hand (no second look-up).
            Settlement::Ack => {
                let expired = q.dispatch(&mut state.handed);
                for message in expired {
                    state.dead_letter(queue, message, "expired");
                }
                return;
            }
            Settlement::Requeue(message) => {
                if let Some(over) = q.return_message(message) {
                    state.dead_letter(queue, over, "delivery_limit");
                }
            }
            Settlement::Reject(message) => state.dead_letter(queue, message, "rejected"),
        }
        state.dispatch(queue);
    }

    fn remove_consumer(
        state: &Weak<Mutex<State>>,
        queue: &str,
        consumer: u64,
        returned: Vec<Stored>,
    ) {
        let Some(state) = state.upgrade() else { return };
        let mut state = lock_state(&state);
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        q.consumers.retain(|s| s.id != consumer);
        let mut over_limit = Vec::new();
        for message in returned.into_iter().rev() {
            over_limit.extend(q.return_message(message));
        }
        for message in over_limit {
            state.dead_letter(queue, message, "delivery_limit");
        }
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        if !q.consumers.is_empty() {
            state.dispatch(queue);
        } else if q.spec.auto_delete || q.spec.exclusive {
            state.delete_queue(queue);
        } else {
            state.start_expiry(queue);
        }
    }
}

impl State {
    /// Adds a consumer to queue `name` (there is one) and hands it what the queue has ready.
    fn add_consumer(&mut self, name: &str, id: u64, prefetch: u16, sink: Sink) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        // In use: no expiry runs.
        queue.expires_at = None;
        queue.consumers.push(Slot {
            id,
            prefetch,
            unsettled: 0,
            sink,
        });
        self.dispatch(name);
        // With no expiry running any more, the entries left are all void: dropped, so that
        // publishes do not read the clock to find that out.
        if self.queues.values().all(|q| q.expires_at.is_none()) {
            self.expiries.clear();
        }
    }

    /// Puts what was handed to inline consumers back at the head of their queues, as it was
    /// (no redelivery counted: no handler saw it), handing nothing over now (while a panic
    /// unwinds); a task hands it over again once the panic is over, where there is a runtime.
    /// Messages of consumers without acknowledgements are dropped: the broker forgot them
    /// already.
    fn put_back(&mut self, handed: Handed) {
        let mut queues: Vec<Arc<str>> = Vec::new();
        // Last first: each goes back before the ones after it.
        for (_, mut delivery) in handed.first.into_iter().chain(handed.more).rev() {
            let Some(Settler::Memory(acker)) = delivery.settler.take() else {
                continue;
            };
            let redelivered = delivery.redelivered;
            let mut stored = acker.stored(delivery.take_message());
            stored.redelivered = redelivered;
            let consumer = acker.consumer;
            let Some(queue) = self.queues.get_mut(&*consumer.queue) else {
                continue;
            };
            if let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer.id) {
                slot.unsettled = slot.unsettled.saturating_sub(1);
            }
            queue.requeue(stored);
            if !queues.contains(&consumer.queue) {
                queues.push(consumer.queue.clone());
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        runtime.spawn(async move {
            let Some(state) = me.upgrade() else { return };
            let mut state = lock_state(&state);
            for queue in queues {
                state.dispatch(&queue);
            }
        });
    }

    /// Routes a message to the queues its exchange binds for its routing key; one that is
    /// not published comes back with the reason.
    fn route(&mut self, message: OutgoingMessage) -> Result<(), Box<Unpublished>> {
        let unroutable = |message: OutgoingMessage| {
            if message.mandatory {
                Err(Box::new(Unpublished {
                    error: TransportError::Unroutable {
                        exchange: message.exchange.to_string(),
                        routing_key: message.routing_key.clone(),
                    },
                    message,
                }))
            } else {
                Ok(())
            }
        };
        if message.exchange.is_empty() {
            // The default exchange: the routing key names the queue (copied only for a
            // message that waits in it: most are handed straight to a consumer).
            let Some(queue) = self.queues.get_mut(&*message.routing_key) else {
                return unroutable(message);
            };
            if let Some(message) = queue.hand_over(Stored::new(message), &mut self.handed) {
                let name = message.routing_key.clone();
                self.queue_up(&name, message);
            }
            return Ok(());
        }
        let Some(exchange) = self.exchanges.get(&*message.exchange) else {
            return Err(Box::new(Unpublished {
                error: TransportError::NotFound(format!("no exchange '{}'", message.exchange)),
                message,
            }));
        };
        // The queues bound for the key; several get their copies in name order.
        let kind = exchange.spec.kind;
        // (Most messages go to one queue: no list is made for them, nor a name counted.)
        let mut first: Option<&Arc<str>> = None;
        let mut targets: Vec<Arc<str>> = Vec::new();
        for binding in &exchange.bindings {
            let routed = match kind {
                ExchangeType::Direct => binding.key == message.routing_key,
                ExchangeType::Topic => binding.pattern.matches(&binding.key, &message.routing_key),
                _ => kind.routes(
                    &binding.key,
                    &binding.arguments,
                    &message.routing_key,
                    &message.properties.headers,
                ),
            };
            if !routed || first == Some(&binding.queue) || targets.contains(&binding.queue) {
                continue;
            }
            match &first {
                None => first = Some(&binding.queue),
                Some(_) => targets.push(binding.queue.clone()),
            }
        }
        let Some(first) = first else {
            return unroutable(message);
        };
        if targets.is_empty() {
            // Handed straight to a consumer, most of the time: the queue's name is not
            // counted for that.
            let Some(queue) = self.queues.get_mut(&**first) else {
                return Ok(());
            };
            if let Some(message) = queue.hand_over(Stored::new(message), &mut self.handed) {
                let first = first.clone();
                self.queue_up(&first, message);
            }
            return Ok(());
        }
        targets.push(first.clone());
        targets.sort_unstable();
        let Some(last) = targets.len().checked_sub(1) else {
            return unroutable(message);
        };
        // One copy per queue, the last one the message itself.
        let mut message = Some(message);
        for (i, name) in targets.iter().enumerate() {
            let Some(original) = message.as_ref() else {
                continue;
            };
            let stored = if i == last {
                message.take().map(Stored::new)
            } else {
                Some(Stored::new(original.clone()))
            };
            if let Some(stored) = stored {
                self.deliver_to(name, stored);
            }
        }
        Ok(())
    }

    /// Hands a message to a consumer of queue `name` (if there is one) with room, when nothing
    /// waits before it; otherwise queues it.
    fn deliver_to(&mut self, name: &str, message: Stored) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        if let Some(message) = queue.hand_over(message, &mut self.handed) {
            self.queue_up(name, message);
        }
    }

    /// Puts a message in queue `name` (if there is one), hands out what the queue has ready,
    /// and starts the timer that expires the message if the queue stays idle.
    fn queue_up(&mut self, name: &str, message: Stored) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let timer = queue.enqueue(message);
        let expired = queue.dispatch(&mut self.handed);
        for message in expired {
            self.dead_letter(name, message, "expired");
        }
        if let Some(at) = timer {
            self.start_message_timer(name, at);
        }
    }

    /// Hands out what a queue has ready, after dead-lettering the messages expired at its
    /// head.
    fn dispatch(&mut self, name: &str) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let expired = queue.dispatch(&mut self.handed);
        for message in expired {
            self.dead_letter(name, message, "expired");
        }
    }

    /// After a message went into queue `name`: hands it out, and starts the timer that
    /// expires it if the queue stays idle (`timer`, from [`Queue::enqueue`]).
    fn after_enqueue(&mut self, name: &str, timer: Option<Instant>) {
        self.dispatch(name);
        if let Some(at) = timer {
            self.start_message_timer(name, at);
        }
    }

    /// Starts the timer that expires the messages of queue `name` at `at` if it stays idle.
    fn start_message_timer(&self, name: &str, at: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (me, name) = (self.me.clone(), name.to_owned());
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(state) = me.upgrade() else { return };
            let mut state = lock_state(&state);
            let Some(queue) = state.queues.get_mut(&name) else {
                return;
            };
            queue.message_timer = None;
            state.dispatch(&name);
            // The next message to expire, if any, gets its own timer.
            let next = state.queues.get_mut(&name).and_then(Queue::next_timer);
            state.after_enqueue(&name, next);
        });
    }

    /// Publishes a message rejected or expired in queue `from` to its dead-letter exchange,
    /// as RabbitMQ does (its `x-death` header says where it came from and why); with none, it
    /// is dropped.
    fn dead_letter(&mut self, from: &str, message: Stored, reason: &str) {
        let Some(queue) = self.queues.get(from) else {
            return;
        };
        let arguments = &queue.spec.arguments;
        let Some(exchange) = arguments.dead_letter_exchange.clone() else {
            return;
        };
        let routing_key = arguments
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        let mut properties = message.properties;
        // A message that expired out of this queue before is in a cycle: dropped, as
        // RabbitMQ drops it.
        let deaths = match properties.headers.remove("x-death") {
            Some(serde_json::Value::Array(deaths)) => deaths,
            _ => Vec::new(),
        };
        let seen = |d: &serde_json::Value| d["queue"] == from && d["reason"] == reason;
        if reason == "expired" && deaths.iter().any(seen) {
            return;
        }
        let mut death = serde_json::json!({
            "count": 1,
            "reason": reason,
            "queue": from,
            "exchange": &*message.exchange,
            "routing-keys": [message.routing_key],
        });
        let mut others = Vec::new();
        for d in deaths {
            if seen(&d) {
                death["count"] = serde_json::json!(d["count"].as_u64().unwrap_or(0) + 1);
            } else {
                others.push(d);
            }
        }
        let mut all = vec![death];
        all.extend(others);
        properties
            .headers
            .insert("x-death", serde_json::Value::Array(all));
        // RabbitMQ takes the expiration off, so that it does not expire again at once.
        properties.expiration = None;
        let message = OutgoingMessage {
            exchange: exchange.into(),
            routing_key,
            mandatory: false,
            properties,
            body: message.body,
        };
        // A dead-letter exchange that does not exist drops the message, as on RabbitMQ.
        let _ = self.route(message);
    }

    fn delete_queue(&mut self, name: &str) {
        self.queues.remove(name);
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|b| &*b.queue != name);
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
    /// Puts a new message in place (by priority in a priority queue), with its expiry; the
    /// time a timer should expire it at if the queue is idle, where none is set for sooner.
    fn enqueue(&mut self, mut message: Stored) -> Option<Instant> {
        self.prioritise(&mut message);
        let arguments = &self.spec.arguments;
        let ttl = match (arguments.message_ttl, message.properties.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        message.expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        let at = message.expires_at;
        // After every message of the same or a higher priority.
        let index = self
            .ready
            .iter()
            .rposition(|m| m.priority >= message.priority)
            .map_or(0, |i| i + 1);
        self.ready.insert(index, message);
        match (at, self.message_timer) {
            (Some(at), Some(running)) if running <= at => None,
            (Some(at), _) => {
                self.message_timer = Some(at);
                Some(at)
            }
            (None, _) => None,
        }
    }

    /// Gives a message its priority in this queue (0 unless it is a priority queue).
    fn prioritise(&self, message: &mut Stored) {
        if let Some(max) = self.spec.arguments.max_priority {
            message.priority = message.properties.priority.unwrap_or(0).min(max);
        }
    }

    /// Takes back a message delivered and not settled: requeued, or, past a quorum queue's
    /// delivery limit, handed back to be dead-lettered.
    fn return_message(&mut self, mut message: Stored) -> Option<Stored> {
        message.redelivered = true;
        message.delivery_count += 1;
        let arguments = &self.spec.arguments;
        if arguments.queue_type == Some(super::QueueType::Quorum)
            && arguments
                .delivery_limit
                .is_some_and(|limit| message.delivery_count > limit)
        {
            return Some(message);
        }
        self.requeue(message);
        None
    }

    /// Puts a message back at the head of its priority.
    fn requeue(&mut self, message: Stored) {
        let index = self
            .ready
            .iter()
            .position(|m| m.priority <= message.priority)
            .unwrap_or(self.ready.len());
        self.ready.insert(index, message);
    }

    /// When the next message to expire does, if no timer runs for it.
    fn next_timer(&mut self) -> Option<Instant> {
        let at = self.ready.iter().filter_map(|m| m.expires_at).min()?;
        if self.message_timer.is_some_and(|running| running <= at) {
            return None;
        }
        self.message_timer = Some(at);
        Some(at)
    }

    /// Hands ready messages to consumers with room, round-robin; returns the messages found
    /// expired at the head of the queue, taken out.
    fn dispatch(&mut self, handed: &mut Handed) -> Vec<Stored> {
        let mut expired = Vec::new();
        // The clock is read once, and only for a message that can expire: not a scan of the
        // queue each time a settled message makes room.
        let mut clock = None;
        let mut is_expired = |message: &Stored| {
            message.expires_at.is_some() && message.expired(*clock.get_or_insert_with(Instant::now))
        };
        while self.ready.front().is_some_and(&mut is_expired) {
            expired.extend(self.ready.pop_front());
        }
        while !self.ready.is_empty() {
            let Some(index) = self.next_with_room() else {
                return expired;
            };
            let Some(message) = self.ready.pop_front() else {
                return expired;
            };
            if is_expired(&message) {
                expired.push(message);
                continue;
            }
            if let Some(message) = self.give(index, message, handed) {
                self.ready.push_front(message);
            }
        }
        expired
    }

    /// A new message handed straight to a consumer with room, when none waits before it and
    /// it cannot expire: it does not go through the queue. Back if it is to be queued.
    fn hand_over(&mut self, mut message: Stored, handed: &mut Handed) -> Option<Stored> {
        if !self.ready.is_empty()
            || message.properties.expiration.is_some()
            || self.spec.arguments.message_ttl.is_some()
        {
            return Some(message);
        }
        self.prioritise(&mut message);
        while let Some(index) = self.next_with_room() {
            match self.give(index, message, handed) {
                None => return None,
                Some(back) => message = back,
            }
        }
        Some(message)
    }

    /// The consumer whose turn it is among those with room (round-robin), if any.
    fn next_with_room(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        let offset = (0..n).find(|i| {
            let slot = &self.consumers[(self.next + i) % n];
            slot.prefetch == 0 || slot.unsettled < usize::from(slot.prefetch)
        })?;
        let index = (self.next + offset) % n;
        self.next = (index + 1) % n;
        Some(index)
    }

    /// Hands a message to consumer `index`; back if that consumer is gone (its slot is then
    /// removed; its own drop cleans up the rest).
    fn give(&mut self, index: usize, message: Stored, handed: &mut Handed) -> Option<Stored> {
        let slot = &mut self.consumers[index];
        match &slot.sink {
            Sink::Channel(tx) => match tx.send(message) {
                Ok(()) => {
                    slot.unsettled += 1;
                    None
                }
                Err(mpsc::error::SendError(message)) => {
                    self.consumers.remove(index);
                    Some(message)
                }
            },
            Sink::Inline {
                handler,
                acked: None,
                ..
            } => {
                let delivery = Delivery::settled(
                    message.exchange,
                    message.routing_key,
                    message.redelivered,
                    message.properties,
                    message.body,
                );
                handed.push(handler, delivery);
                None
            }
            Sink::Inline {
                handler,
                acked: Some(consumer),
                ..
            } => {
                slot.unsettled += 1;
                handed.push(handler, message.delivered_to(consumer));
                None
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
/// it back ([`holding`](Self::holding)) when it is settled or dropped, and it is kept only to
/// be requeued (rejected with `requeue`, or dropped before it settled). Small, as each
/// delivery carries one.
pub(crate) struct MemoryAcker {
    consumer: Arc<ConsumerRef>,
    /// The message's priority, expiry and delivery count, which a requeue keeps.
    priority: u8,
    expires_at: Option<Instant>,
    delivery_count: u32,
}

impl MemoryAcker {
    /// Acknowledges the delivery now (its message is not needed for that).
    pub(crate) fn ack(self) {
        let c = &self.consumer;
        MemoryBroker::settle(&c.state, &c.queue, c.id, Settlement::Ack);
    }

    /// The delivery to be settled, its message handed back: requeued if dropped unsettled.
    pub(crate) fn holding(self, message: ReturnedMessage) -> MemorySettling {
        MemorySettling {
            message: Some(self.stored(message)),
            acker: self,
        }
    }

    /// The message as the queue keeps it, to be requeued.
    fn stored(&self, message: ReturnedMessage) -> Stored {
        Stored {
            exchange: message.exchange,
            routing_key: message.routing_key,
            redelivered: true,
            properties: message.properties,
            body: message.body,
            priority: self.priority,
            expires_at: self.expires_at,
            delivery_count: self.delivery_count,
        }
    }
}

/// A delivery of the embedded broker with its message, settled by [`ack`](Self::ack) or
/// [`reject`](Self::reject); requeued if dropped first.
pub(crate) struct MemorySettling {
    acker: MemoryAcker,
    /// `None` once settled.
    message: Option<Stored>,
}

impl MemorySettling {
    fn settle(&mut self, settlement: impl FnOnce(Stored) -> Settlement) {
        if let Some(message) = self.message.take() {
            let c = &self.acker.consumer;
            MemoryBroker::settle(&c.state, &c.queue, c.id, settlement(message));
        }
    }

    pub(crate) fn ack(mut self) {
        self.settle(|_| Settlement::Ack);
    }

    pub(crate) fn reject(mut self, requeue: bool) {
        if requeue {
            self.settle(Settlement::Requeue);
        } else {
            self.settle(Settlement::Reject);
        }
    }
}

impl Drop for MemorySettling {
    fn drop(&mut self) {
        // Dropped unsettled: requeued.
        self.settle(Settlement::Requeue);
    }
}

/// A consumer as its deliveries settle against it: its broker, queue and id, one count per
/// delivery.
struct ConsumerRef {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    id: u64,
}

struct MemoryConsumer {
    consumer: Arc<ConsumerRef>,
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
        let c = &self.consumer;
        MemoryBroker::remove_consumer(&c.state, &c.queue, c.id, returned);
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
        self.rx
            .poll_recv(cx)
            .map(|message| message.map(|m| Ok(m.delivered_to(&self.consumer))))
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
            let mut state = lock_state(&self.state);
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
            let mut state = lock_state(&self.state);
            state.expire();
            let result = match state.queues.get(&spec.name) {
                Some(existing) if existing.spec != *spec => {
                    Err(TransportError::PreconditionFailed(format!(
                        "queue '{}' exists as ({}), not as declared now ({})",
                        spec.name, existing.spec, spec
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
                            message_timer: None,
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

    fn bind_queue_with<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
        arguments: &'a Headers,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        let result = {
            let mut state = lock_state(&self.state);
            state.expire();
            if !state.queues.contains_key(queue) {
                Err(TransportError::NotFound(format!("no queue '{queue}'")))
            } else {
                match state.exchanges.get_mut(exchange) {
                    None => Err(TransportError::NotFound(format!(
                        "no exchange '{exchange}'"
                    ))),
                    Some(ex) => {
                        let binding = Binding {
                            key: binding_key.to_owned(),
                            pattern: KeyPattern::of(binding_key),
                            queue: Arc::from(queue),
                            arguments: arguments.clone(),
                        };
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

    fn publish(&self, message: OutgoingMessage) -> Publishing<'_> {
        Publishing::done(
            self.publish_now(message)
                .map_err(|unpublished| unpublished.error),
        )
    }

    fn publish_or_return(&self, message: OutgoingMessage) -> Publishing<'_, Box<Unpublished>> {
        Publishing::done(self.publish_now(message))
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Consumer, TransportError>> {
        let result = {
            let mut state = lock_state(&self.state);
            state.expire();
            state.next_consumer += 1;
            let id = state.next_consumer;
            match state.queues.get_mut(queue) {
                None => Err(TransportError::NotFound(format!("no queue '{queue}'"))),
                Some(_) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    state.add_consumer(queue, id, prefetch, Sink::Channel(tx));
                    Ok(Consumer::new(Box::new(MemoryConsumer {
                        consumer: Arc::new(ConsumerRef {
                            state: Arc::downgrade(&self.state),
                            queue: Arc::from(queue),
                            id,
                        }),
                        rx,
                        cancelled: false,
                    })))
                }
            }
        };
        async move { result }.boxed()
    }

    fn consume_inline<'a>(
        &'a self,
        queue: &'a str,
        acks: InlineAcks,
        handler: InlineHandler,
    ) -> Option<BoxFuture<'a, Result<InlineConsumer, TransportError>>> {
        let result = {
            let mut state = lock_state(&self.state);
            state.expire();
            state.next_consumer += 1;
            let id = state.next_consumer;
            if state.queues.contains_key(queue) {
                let (me, queue) = (Arc::downgrade(&self.state), Arc::<str>::from(queue));
                let (ended, on_end) = oneshot::channel();
                let (prefetch, acked) = match acks {
                    InlineAcks::None => (0, None),
                    InlineAcks::Manual { prefetch } => (
                        prefetch,
                        Some(Arc::new(ConsumerRef {
                            state: me.clone(),
                            queue: queue.clone(),
                            id,
                        })),
                    ),
                };
                let sink = Sink::Inline {
                    handler,
                    acked,
                    _ended: ended,
                };
                state.add_consumer(&queue, id, prefetch, sink);
                Ok(InlineConsumer::new(
                    async move {
                        let _ = on_end.await;
                    },
                    move || MemoryBroker::remove_consumer(&me, &queue, id, Vec::new()),
                ))
            } else {
                Err(TransportError::NotFound(format!("no queue '{queue}'")))
            }
        };
        Some(async move { result }.boxed())
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

    #[test]
    fn a_binding_key_s_pattern_routes_as_topic_matching_does() {
        let words = ["a", "bc", "", "*", "#"];
        let mut keys = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = keys
                .iter()
                .flat_map(|k| {
                    words.iter().map(move |w| {
                        if k.is_empty() {
                            (*w).to_owned()
                        } else {
                            format!("{k}.{w}")
                        }
                    })
                })
                .collect();
            keys.extend(longer);
        }
        keys.sort();
        keys.dedup();
        for binding in &keys {
            let pattern = KeyPattern::of(binding);
            for routing in keys.iter().filter(|k| !k.contains(['*', '#'])) {
                assert_eq!(
                    pattern.matches(binding, routing),
                    super::super::topic_matches(binding, routing),
                    "{binding:?} ({pattern:?}) against {routing:?}"
                );
            }
        }
        assert_eq!(KeyPattern::of("svc.*"), KeyPattern::OneWordAfter(3));
        assert_eq!(KeyPattern::of("a.*.*"), KeyPattern::Other);
        assert_eq!(KeyPattern::of("svc.greet"), KeyPattern::Literal);
    }
    use futures_util::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn brokers_of_one_name_share_their_queues() {
        let a = MemoryBroker::named("shared-by-name");
        let b = MemoryBroker::named("shared-by-name");
        a.declare_queue(&QueueSpec::durable("q")).await.unwrap();
        let mut consumer = b.consume("q", 0).await.unwrap();
        a.publish(OutgoingMessage {
            exchange: Default::default(),
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

    /// A message that is not published comes back whole, with why: what a reply's retry and a
    /// request's dead-lettering rely on.
    #[tokio::test]
    async fn a_message_not_published_comes_back_whole() {
        let broker = MemoryBroker::new();
        let unpublished = broker
            .publish_or_return(to_key("no-such-exchange"))
            .await
            .expect_err("no exchange");
        assert!(matches!(unpublished.error, TransportError::NotFound(_)));
        assert_eq!(unpublished.message.routing_key, "key");
        assert_eq!(unpublished.message.body, b"kept");
        broker
            .declare_exchange(&ExchangeSpec::durable_topic("x"))
            .await
            .unwrap();
        let unpublished = broker
            .publish_or_return(to_key("x"))
            .await
            .expect_err("no queue bound, mandatory");
        assert!(matches!(
            unpublished.error,
            TransportError::Unroutable { ref routing_key, .. } if routing_key == "key"
        ));
        assert_eq!(unpublished.message.body, b"kept");
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

    /// An inline consumer is handed each message as it is routed, before `publish` returns,
    /// and the queue keeps nothing of it; messages that waited are handed over when it
    /// starts. Dropped, it gets nothing more; it ends with the broker.
    #[tokio::test]
    async fn an_inline_consumer_is_handed_each_message_as_it_is_routed() {
        let broker = MemoryBroker::new();
        broker
            .declare_exchange(&ExchangeSpec::durable_topic("ex"))
            .await
            .unwrap();
        broker
            .declare_queue(&QueueSpec::durable("replies"))
            .await
            .unwrap();
        broker.bind_queue("replies", "ex", "key").await.unwrap();
        let body = |text: &str| OutgoingMessage {
            body: text.as_bytes().to_vec(),
            ..to_key("ex")
        };
        broker.publish(body("waited")).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let start = |seen: &Arc<Mutex<Vec<String>>>| {
            let seen = seen.clone();
            let handler: InlineHandler = Arc::new(move |delivery: Delivery| {
                assert_eq!(delivery.routing_key, "key");
                lock(&seen).push(String::from_utf8_lossy(&delivery.body).into_owned());
            });
            broker
                .consume_inline("replies", InlineAcks::None, handler)
                .expect("the embedded broker consumes inline")
        };
        let consumer = start(&seen).await.unwrap();
        assert_eq!(*lock(&seen), ["waited"]);
        broker.publish(body("routed")).await.unwrap();
        assert_eq!(*lock(&seen), ["waited", "routed"]);
        assert_eq!(broker.queue_len("replies"), Some(0));

        drop(consumer);
        broker.publish(body("after")).await.unwrap();
        assert_eq!(lock(&seen).len(), 2);
        assert_eq!(broker.queue_len("replies"), Some(1));

        let mut consumer = start(&seen).await.unwrap();
        assert_eq!(*lock(&seen), ["waited", "routed", "after"]);
        assert!(futures_util::poll!(Box::pin(consumer.ended())).is_pending());
        drop(broker);
        tokio::time::timeout(Duration::from_secs(5), consumer.ended())
            .await
            .expect("the consumer ends with its broker");
    }

    /// An inline handler runs once the broker is unlocked: it may publish.
    #[tokio::test]
    async fn an_inline_handler_may_use_the_broker() {
        let broker = MemoryBroker::new();
        for queue in ["replies", "copies"] {
            broker
                .declare_queue(&QueueSpec::durable(queue))
                .await
                .unwrap();
        }
        let to = |queue: &str, body: Vec<u8>| OutgoingMessage {
            exchange: Default::default(),
            routing_key: queue.into(),
            mandatory: true,
            properties: Properties::default(),
            body,
        };
        let copier = broker.clone();
        let handler: InlineHandler = Arc::new(move |delivery: Delivery| {
            let copy = copier.publish_now(to("copies", delivery.body.clone()));
            assert!(copy.is_ok(), "the copy is published");
        });
        let _consumer = broker
            .consume_inline("replies", InlineAcks::None, handler)
            .expect("inline")
            .await
            .unwrap();
        broker
            .publish(to("replies", b"one".to_vec()))
            .await
            .unwrap();
        assert_eq!(broker.queue_len("copies"), Some(1));
    }

    /// With manual acknowledgements, an inline consumer holds at most `prefetch` deliveries
    /// unsettled; settling one hands over the next at once, and one dropped unsettled comes
    /// back, redelivered.
    #[tokio::test]
    async fn an_inline_consumer_with_acks_is_handed_a_message_per_settled_one() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&QueueSpec::durable("work"))
            .await
            .unwrap();
        let to_work = |body: &str| OutgoingMessage {
            exchange: Default::default(),
            routing_key: "work".into(),
            mandatory: true,
            properties: Properties::default(),
            body: body.as_bytes().to_vec(),
        };
        let held = Arc::new(Mutex::new(Vec::<Delivery>::new()));
        let holder = held.clone();
        let handler: InlineHandler = Arc::new(move |delivery| lock(&holder).push(delivery));
        let acks = InlineAcks::Manual { prefetch: 2 };
        let consumer = broker
            .consume_inline("work", acks, handler)
            .expect("inline")
            .await
            .unwrap();
        for body in ["1", "2", "3"] {
            broker.publish(to_work(body)).await.unwrap();
        }
        let bodies = |held: &Mutex<Vec<Delivery>>| -> Vec<(String, bool)> {
            lock(held)
                .iter()
                .map(|d| (String::from_utf8_lossy(&d.body).into_owned(), d.redelivered))
                .collect()
        };
        let (one, two) = (("1".to_owned(), false), ("2".to_owned(), false));
        assert_eq!(bodies(&held), [one.clone(), two.clone()]);
        assert_eq!(broker.queue_len("work"), Some(1));

        // Acknowledging the first makes room: the third is handed over before `ack` returns.
        let first = lock(&held).remove(0);
        first.ack().await.unwrap();
        assert_eq!(bodies(&held), [two, ("3".to_owned(), false)]);
        assert_eq!(broker.queue_len("work"), Some(0));

        // Dropped unsettled, the second comes back to the consumer, redelivered.
        let second = lock(&held).remove(0);
        drop(second);
        assert_eq!(
            bodies(&held),
            [("3".to_owned(), false), ("2".to_owned(), true)]
        );

        // Once the consumer is gone, its deliveries still settle: acknowledged, or back in
        // the queue when dropped.
        drop(consumer);
        let (third, again) = {
            let mut held = lock(&held);
            (held.remove(0), held.remove(0))
        };
        third.ack().await.unwrap();
        assert_eq!(broker.queue_len("work"), Some(0));
        drop(again);
        assert_eq!(broker.queue_len("work"), Some(1));
    }

    /// A handler that panics leaves its message in the queue, and the broker serves on: the
    /// delivery dropped while the panic unwinds is not handed straight back to it (which would
    /// never end), but once the panic is over.
    #[tokio::test]
    async fn a_message_whose_inline_handler_panics_is_handed_over_again_after_the_panic() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&QueueSpec::durable("work"))
            .await
            .unwrap();
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::<Delivery>::new()));
        let (first_time, holder) = (panicked.clone(), held.clone());
        let handler: InlineHandler = Arc::new(move |delivery| {
            if !first_time.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("the handler fell over");
            }
            lock(&holder).push(delivery);
        });
        let acks = InlineAcks::Manual { prefetch: 10 };
        let _consumer = broker
            .consume_inline("work", acks, handler)
            .expect("inline")
            .await
            .unwrap();
        let message = OutgoingMessage {
            exchange: Default::default(),
            routing_key: "work".into(),
            mandatory: true,
            properties: Properties::default(),
            body: b"once".to_vec(),
        };
        let publishing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(broker.publish_now(message))
        }));
        assert!(
            publishing.is_err(),
            "the handler's panic reaches the publisher"
        );
        assert!(lock(&held).is_empty());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let delivery = lock(&held)
            .pop()
            .expect("handed over again after the panic");
        assert_eq!(delivery.body, b"once");
        assert!(delivery.redelivered);
        delivery.ack().await.unwrap();
        assert_eq!(broker.queue_len("work"), Some(0));
    }

    #[tokio::test]
    async fn an_inline_consumer_needs_its_queue() {
        let broker = MemoryBroker::new();
        let handler: InlineHandler = Arc::new(|_| {});
        let started = broker.consume_inline("missing", InlineAcks::None, handler);
        assert!(matches!(
            started.expect("inline").await,
            Err(TransportError::NotFound(_))
        ));
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
                exchange: Default::default(),
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
