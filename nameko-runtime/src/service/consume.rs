//! Consuming a queue for an entrypoint: the loop behind [`ServiceContext::consume`], which the
//! RPC and event entrypoints use, and any entrypoint that listens on a queue can.
//!
//! The loop takes a delivery, waits for one of the service's worker slots and spawns the
//! handler with both. Where the transport consumes inline (the embedded broker), a delivery
//! is started as it is routed, with no task between, when the loop runs, a slot is free and
//! none waits before it; only the others go through the loop. A consumer the broker cancels
//! (its queue deleted, a node lost, a `consumer_timeout`) is replaced: the queue is declared
//! and consumed again, with a doubling delay, and the service fails only when that does not
//! work. A message redelivered too many
//! times is given up. At the stop, the consumer is cancelled and every message it received but
//! did not start goes back to the queue at once; it is closed once the workers have finished
//! (closing it earlier would lose their acknowledgements).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::entrypoint::Started;
use super::extension::{ServiceContext, WorkerSlot};
use crate::error::Error;
use crate::protocol::Headers;
use crate::transport::{
    Consumer, Delivery, ExchangeSpec, InlineAcks, InlineConsumer, InlineHandler, QueueSpec,
    SharedTransport, TransportError,
};

/// A queue to consume and how it is bound: declared when the entrypoint starts, and again
/// when the broker cancels its consumer.
#[derive(Debug, Clone)]
pub struct QueueDeclaration {
    queue: QueueSpec,
    bindings: Vec<(ExchangeSpec, String, Headers)>,
}

impl QueueDeclaration {
    /// The queue `queue`, bound to nothing (messages reach it through the default exchange,
    /// by its name).
    pub fn new(queue: QueueSpec) -> Self {
        QueueDeclaration {
            queue,
            bindings: Vec::new(),
        }
    }

    /// Also binds the queue to `exchange` (declared too) with `routing_key`.
    pub fn bind(self, exchange: ExchangeSpec, routing_key: impl Into<String>) -> Self {
        self.bind_with(exchange, routing_key, Headers::new())
    }

    /// Also binds the queue to `exchange` (declared too) with `routing_key` and binding
    /// `arguments` (what a headers exchange matches).
    pub fn bind_with(
        mut self,
        exchange: ExchangeSpec,
        routing_key: impl Into<String>,
        arguments: Headers,
    ) -> Self {
        self.bindings
            .push((exchange, routing_key.into(), arguments));
        self
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue.name
    }

    /// Declares the exchanges, the queue, then the bindings.
    pub async fn declare(&self, transport: &SharedTransport) -> Result<(), Error> {
        for (exchange, _, _) in &self.bindings {
            transport.declare_exchange(exchange).await?;
        }
        transport.declare_queue(&self.queue).await?;
        for (exchange, routing_key, arguments) in &self.bindings {
            transport
                .bind_queue_with(&self.queue.name, &exchange.name, routing_key, arguments)
                .await?;
        }
        Ok(())
    }
}

/// What handles the deliveries of a queue consumed with [`ServiceContext::consume`].
pub trait DeliveryHandler: Send + Sync + 'static {
    /// Whether, on the embedded broker, the future [`handle`](Self::handle) returns is first
    /// polled where the delivery arrives (on the publisher's task, or on the task whose
    /// acknowledgement made room for it), and spawned only if it has to wait. Right where the
    /// publisher waits for the outcome, as an RPC caller waits for its reply: a method that is
    /// done at its first poll runs with no task switch, as a function call would. Leave it
    /// `false` where the publisher goes on without waiting (events, messages): their handlers
    /// would otherwise run before it goes on.
    ///
    /// Only on the service's runtime, while no enabled span is current (so with debug spans
    /// on, as traces turn them on, a call made inside a worker's span is spawned), for a
    /// message not redelivered, and not from within another such first poll: a delivery that
    /// poll hands over to such a handler (the next of a backlog, as it acknowledges) is
    /// spawned.
    const POLL_ON_ARRIVAL: bool = false;

    /// Handles one delivery in `slot` (typically: run a worker with
    /// [`EntrypointContext::run_worker`](super::EntrypointContext::run_worker), then settle
    /// the delivery). It runs as a task of the service (its first poll possibly on the
    /// publisher's, see [`POLL_ON_ARRIVAL`](Self::POLL_ON_ARRIVAL)): a stop waits for it, a
    /// kill drops it (the delivery is then neither settled nor answered, and the broker
    /// redelivers it).
    ///
    /// The future is spawned as it is: a concrete future (an `async` block, or an `async fn`)
    /// costs no allocation per message (one first polled on arrival is boxed for that poll).
    /// `handle` itself is called where the delivery arrives, which on the embedded broker is whatever publishes or settles a message (possibly a
    /// thread outside tokio): do the work in the future, not before returning it, and do not
    /// call `tokio::spawn` or `Handle::current` there. The same holds for `give_up`.
    fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        slot: WorkerSlot,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Settles a message delivered more than `MAX_REDELIVERIES` times without being settled
    /// for good (a poison message). The default rejects it without requeue (dead-lettered
    /// where its queue has a dead-letter exchange).
    fn give_up(
        self: Arc<Self>,
        delivery: Delivery,
        reason: String,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            tracing::error!(routing_key = %delivery.routing_key, %reason, "dropped a message");
            if let Err(error) = delivery.reject(false).await {
                tracing::warn!(%error, "could not reject a message");
            }
        }
    }
}

/// The first wait before declaring a cancelled consumer's queue again; it doubles.
const FIRST_RECONSUME_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_RECONSUME_DELAY: Duration = Duration::from_secs(5);
/// Attempts to consume a cancelled consumer's queue again before the service fails (about 30 s).
const RECONSUME_ATTEMPTS: u32 = 10;
/// How long a stop waits for a cancelled consumer to hand back the messages it prefetched.
const RETURN_PREFETCHED_TIMEOUT: Duration = Duration::from_secs(2);

/// Declares and consumes the queue; the loop is what keeps running.
pub(crate) async fn start<H: DeliveryHandler>(
    cx: ServiceContext,
    declaration: Arc<QueueDeclaration>,
    handler: Arc<H>,
) -> Result<Started, Error> {
    let transport = cx.transport();
    declaration.declare(transport).await?;
    let admission = Arc::new(Admission {
        held: crate::metrics::messages_held(cx.service_name(), declaration.queue()),
        queue: declaration.queue().to_owned(),
        max_redeliveries: cx.config().max_redeliveries,
        cx: cx.clone(),
        handler,
        runtime: tokio::runtime::Handle::current(),
    });
    let source = Source::open(&admission, &declaration).await?;
    tracing::debug!(
        service = cx.service_name(),
        queue = declaration.queue(),
        "consuming"
    );
    Ok(Started::running(async move {
        let queue = declaration.queue().to_owned();
        let (consumers, failure) = consume(&admission, &declaration, source).await;
        if failure.is_some() {
            // The service stops with this loop's failure; its workers still finish first.
            cx.stop_token().cancel();
        }
        cx.workers_finished().await;
        for consumer in consumers {
            consumer.close().await;
        }
        match failure {
            Some(reason) => Err(Error::ConsumerFailed { queue, reason }),
            None => Ok(()),
        }
    }))
}

/// What starts a delivery: counted as held, given up if redelivered too often, otherwise
/// handed with a worker slot to the entrypoint's handler, as a task of the service.
struct Admission<H> {
    cx: ServiceContext,
    handler: Arc<H>,
    queue: String,
    max_redeliveries: u32,
    held: prometheus_client::metrics::gauge::Gauge,
    /// The service's runtime: an inline consumer's deliveries come on the publisher's task.
    runtime: tokio::runtime::Handle,
}

impl<H: DeliveryHandler> Admission<H> {
    /// Counts `delivery` as held, then [`check`](Self::check)s it.
    fn admit(&self, mut delivery: Delivery) -> Option<Delivery> {
        delivery.hold(&self.held);
        self.check(delivery)
    }

    /// Gives `delivery` up (and `None`) if it was delivered too often. Once per delivery: each
    /// call counts a redelivery.
    fn check(&self, delivery: Delivery) -> Option<Delivery> {
        match self.too_often(&delivery) {
            Some(reason) => {
                self.give_up(delivery, reason);
                None
            }
            None => Some(delivery),
        }
    }

    /// Why `delivery` is given up, if it was delivered too often (and counted, if it was
    /// delivered before). Looked at by reference: a delivery is large, and most are not.
    fn too_often(&self, delivery: &Delivery) -> Option<String> {
        if !delivery.redelivered {
            return None;
        }
        let count = super::redelivery::redeliveries(&self.queue, delivery);
        (count > self.max_redeliveries).then(|| {
            format!(
                "delivered {} times without being settled (MAX_REDELIVERIES is {})",
                count.saturating_add(1),
                self.max_redeliveries
            )
        })
    }

    /// Hands `delivery` to the handler's `give_up`, as a task of the service.
    fn give_up(&self, delivery: Delivery, reason: String) {
        let give_up = self.handler.clone().give_up(delivery, reason);
        self.spawn(give_up);
    }

    /// Runs `task` as a task of the service, on its runtime.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let _spawning = Flag::raise(&SPAWNING);
        self.cx.spawn_on(&self.runtime, task);
    }

    /// Starts a delivery's `task`: polled here first where [`DeliveryHandler::POLL_ON_ARRIVAL`]
    /// allows, spawned otherwise or if it has to wait.
    ///
    /// Not polled here: a redelivered message's (its worker may have been dropped by a runtime
    /// shutting down, which this thread may be running), nor under a span (the handler's
    /// events and spans would sit under the caller's, which they do not when spawned).
    fn start(&self, task: impl Future<Output = ()> + Send + 'static, redelivered: bool) {
        if !H::POLL_ON_ARRIVAL
            || redelivered
            || POLLING.get()
            || !tracing::Span::current().is_none()
            || !self.on_runtime()
        {
            return self.spawn(task);
        }
        let mut task = self.cx.prepare(task);
        let polled = {
            let _polling = Flag::raise(&POLLING);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            // As part of no worker, as on a task of its own: not of the caller's, if the
            // caller is one.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::context::outside_workers(|| task.as_mut().poll(&mut cx))
            }))
        };
        match polled {
            Ok(std::task::Poll::Ready(())) => {}
            // Polled again as a task, which wakes it from then on.
            Ok(std::task::Poll::Pending) => {
                let _spawning = Flag::raise(&SPAWNING);
                self.runtime.spawn(task);
            }
            // As tokio does with a task that panics: dropped. Its delivery, dropped as the
            // panic unwound, went back to its queue and is handed over again by a task of the
            // broker, as redelivered (so spawned); one still in the task goes back now, to the
            // loop (`SPAWNING`), not to a poll here that could panic again.
            Err(panic) => crate::context::outside_workers(|| {
                let panic = crate::service::worker::panic_error(panic.as_ref()).value;
                tracing::error!(queue = %self.queue, %panic, "a delivery's handler panicked");
                let _spawning = Flag::raise(&SPAWNING);
                drop(task);
            }),
        }
    }

    /// Whether this thread runs inside the service's runtime.
    fn on_runtime(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok_and(|here| here.id() == self.runtime.id())
    }

    /// An inline consumer's delivery: started now if the loop runs, the service is not
    /// stopping, none waits before it and a worker slot is free; otherwise it waits for the
    /// loop, which starts it in turn, or returns it to the queue at the stop.
    fn handle_inline(&self, mut delivery: Delivery, waiting: &Waiting) {
        delivery.hold(&self.held);
        // Handed over again while this thread spawns a delivery's task or drops one (a
        // runtime shutting down drops a task without running it; a task whose first poll
        // panicked is dropped): the delivery went back to the queue and the queue hands it
        // back here. Sent to the loop instead (dropped with it, the consumer first), so that
        // this ends.
        let start_now = waiting.queued.load(Ordering::Acquire) == 0
            && !self.cx.is_stopping()
            && !SPAWNING.get();
        if start_now {
            if let Some(reason) = self.too_often(&delivery) {
                self.give_up(delivery, reason);
                return;
            }
            match self.cx.try_worker_slot() {
                Some(slot) => {
                    let redelivered = delivery.redelivered;
                    self.start(self.handler.clone().handle(delivery, slot), redelivered);
                }
                None => waiting.push(delivery, true),
            }
        } else {
            waiting.push(delivery, false);
        }
    }
}

thread_local! {
    /// Whether this thread is spawning (or dropping) a task for an inline consumer's
    /// delivery.
    static SPAWNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this thread is polling a delivery's task before spawning it
    /// ([`DeliveryHandler::POLL_ON_ARRIVAL`]): the deliveries that poll hands over are spawned,
    /// so that a queue's backlog, each handed over as the one before is settled, is not polled
    /// one inside the other.
    static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A thread's flag raised until dropped (then as it was, even if what it guards unwinds).
struct Flag {
    flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    was: bool,
}

impl Flag {
    fn raise(flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>) -> Flag {
        Flag {
            flag,
            was: flag.replace(true),
        }
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        self.flag.set(self.was);
    }
}

/// Where an inline consumer puts the deliveries that cannot start at once (the loop not yet
/// running, no free worker slot, or the service stopping), for the loop to start in order, or
/// return to the queue.
struct Waiting {
    to_loop: mpsc::UnboundedSender<(Delivery, bool)>,
    /// How many the loop has not started yet, plus one until the loop runs: while there are
    /// any, a new delivery waits behind them rather than taking a slot first.
    queued: AtomicUsize,
}

impl Waiting {
    /// A delivery for the loop; `checked` if it was [checked](Admission::check) already.
    fn push(&self, delivery: Delivery, checked: bool) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.to_loop.send((delivery, checked)).is_err() {
            // The loop is gone, its consumer first: dropped, the delivery goes back to its
            // queue.
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Where the loop takes its deliveries from.
enum Source {
    /// A consumer's stream: every delivery goes through the loop.
    Stream(Consumer),
    /// An inline consumer (the embedded broker's): deliveries start as they are routed, with
    /// no task between; only those that cannot start at once come to the loop.
    Inline(InlineSource),
}

/// An inline consumer and the deliveries waiting for the loop. (The consumer is dropped
/// first: none is handed over once nothing takes those waiting.)
struct InlineSource {
    consumer: Option<InlineConsumer>,
    waiting: mpsc::UnboundedReceiver<(Delivery, bool)>,
    shared: Arc<Waiting>,
}

/// A delivery the loop took, and whether it was checked for redeliveries already.
type Taken = (Delivery, bool);

impl Source {
    /// Consumes the declared queue: inline where the transport can, otherwise as a stream.
    async fn open<H: DeliveryHandler>(
        admission: &Arc<Admission<H>>,
        declaration: &QueueDeclaration,
    ) -> Result<Source, TransportError> {
        let (transport, queue) = (admission.cx.transport(), declaration.queue());
        let prefetch = admission.cx.config().prefetch_count;
        let (to_loop, waiting) = mpsc::unbounded_channel();
        let shared = Arc::new(Waiting {
            to_loop,
            // Until the loop runs (`Source::run`): messages the queue holds already, or that
            // come while the service's other entrypoints start, wait for it.
            queued: AtomicUsize::new(1),
        });
        let (inline, into) = (admission.clone(), shared.clone());
        let handler: InlineHandler =
            Arc::new(move |delivery| inline.handle_inline(delivery, &into));
        match transport.consume_inline(queue, InlineAcks::Manual { prefetch }, handler) {
            Some(consuming) => Ok(Source::Inline(InlineSource {
                consumer: Some(consuming.await?),
                waiting,
                shared,
            })),
            None => Ok(Source::Stream(transport.consume(queue, prefetch).await?)),
        }
    }

    /// The loop runs: an inline consumer starts deliveries itself from now on.
    fn run(&self) {
        if let Source::Inline(inline) = self {
            inline.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A delivery the loop took from an inline consumer has started (or was given up): the
    /// next may start without waiting for the loop.
    fn started(&self) {
        if let Source::Inline(inline) = self {
            inline.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The next delivery to start; `None` once the consumer ended.
    async fn next(&mut self) -> Option<Result<Taken, TransportError>> {
        match self {
            Source::Stream(consumer) => consumer.next().await.map(|d| d.map(|d| (d, false))),
            Source::Inline(InlineSource {
                consumer, waiting, ..
            }) => {
                let ended = async {
                    match consumer {
                        Some(consumer) => consumer.ended().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    taken = waiting.recv() => taken.map(Ok),
                    () = ended => None,
                }
            }
        }
    }

    /// Stops new deliveries.
    async fn cancel(&mut self) {
        match self {
            Source::Stream(consumer) => consumer.cancel().await,
            Source::Inline(inline) => inline.consumer = None,
        }
    }

    /// The deliveries received and not started, once cancelled: `None` when there are no more.
    async fn next_unstarted(&mut self) -> Option<Delivery> {
        match self {
            Source::Stream(consumer) => consumer.next().await?.ok(),
            Source::Inline(inline) => inline.waiting.try_recv().ok().map(|(d, _)| d),
        }
    }

    /// A consumer to close once the workers are done (closing it earlier would lose their
    /// acknowledgements); an inline one is gone once cancelled.
    fn into_consumer(self) -> Option<Consumer> {
        match self {
            Source::Stream(consumer) => Some(consumer),
            Source::Inline(_) => None,
        }
    }
}

/// One consumer's loop: returns its consumers (cancelled, to be closed once the workers are
/// done: a consumer the broker cancelled was replaced by a new one) and why it failed, if it did.
async fn consume<H: DeliveryHandler>(
    admission: &Arc<Admission<H>>,
    declaration: &QueueDeclaration,
    mut source: Source,
) -> (Vec<Consumer>, Option<String>) {
    let cx = &admission.cx;
    let queue = declaration.queue();
    let (stop, transport) = (cx.stop_token(), cx.transport());
    let mut retired = Vec::new();
    let mut failure = None;
    // One wait for the stop for the whole loop, not one registered per message, and looked at
    // only when no delivery is ready: the stop's flag is checked for each one instead.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // A delivery taken but not started when the loop ends: back to the queue once the
    // consumer is cancelled (an inline consumer would be handed it again at once).
    let mut unstarted = None;
    source.run();
    loop {
        let next = tokio::select! {
            biased;
            next = source.next() => next,
            _ = &mut stopped => break,
        };
        if stop.is_cancelled() {
            // Stopping: a delivery that came with the stop goes back to the queue at once, as
            // the others the consumer holds do below.
            if let Some(Ok((delivery, _))) = next {
                unstarted = Some(delivery);
            }
            break;
        }
        let (delivery, checked) = match next {
            Some(Ok(taken)) => taken,
            Some(Err(e)) => {
                failure = Some(format!("it failed: {e}"));
                break;
            }
            None if stop.is_cancelled() => break,
            None if transport.is_closed() || transport.connection_lost() => {
                failure = Some("it ended with the connection".to_owned());
                break;
            }
            None => {
                tracing::warn!(
                    %queue,
                    "the broker cancelled the consumer (its queue deleted, a node lost, or a consumer timeout); declaring the queue and consuming it again"
                );
                match reconsume(admission, declaration).await {
                    Ok(Some(fresh)) => {
                        tracing::info!(%queue, "consuming again");
                        fresh.run();
                        match std::mem::replace(&mut source, fresh) {
                            // Ended already: closed with the others once the workers are done.
                            Source::Stream(ended) => retired.push(ended),
                            Source::Inline(mut ended) => {
                                ended.consumer = None;
                                while let Ok((delivery, _)) = ended.waiting.try_recv() {
                                    return_to_queue(delivery).await;
                                }
                            }
                        }
                        continue;
                    }
                    Ok(None) => break,
                    Err(reason) => {
                        failure = Some(reason);
                        break;
                    }
                }
            }
        };
        let admitted = match (&source, checked) {
            (_, true) => Some(delivery),
            // Held already, since the inline consumer took it.
            (Source::Inline(_), false) => admission.check(delivery),
            (Source::Stream(_), false) => admission.admit(delivery),
        };
        let Some(delivery) = admitted else {
            source.started();
            continue;
        };
        let Some(slot) = cx.worker_slot().await else {
            unstarted = Some(delivery);
            break;
        };
        // Started now, with its slot: until then, newer deliveries waited behind it.
        source.started();
        cx.spawn(admission.handler.clone().handle(delivery, slot));
    }
    source.cancel().await;
    if let Some(delivery) = unstarted {
        return_to_queue(delivery).await;
    }
    if failure.is_none() {
        // What the consumer holds but no worker started goes back now, not after the drain.
        let returned = async {
            let mut returned = 0usize;
            while let Some(delivery) = source.next_unstarted().await {
                return_to_queue(delivery).await;
                returned += 1;
            }
            returned
        };
        match tokio::time::timeout(RETURN_PREFETCHED_TIMEOUT, returned).await {
            Ok(0) => {}
            Ok(returned) => {
                tracing::info!(%queue, returned, "returned prefetched messages to the queue")
            }
            Err(_) => tracing::debug!(%queue, "the consumer did not end after its cancel"),
        }
    }
    retired.extend(source.into_consumer());
    (retired, failure)
}

/// Puts a delivery no worker started back on its queue.
async fn return_to_queue(delivery: Delivery) {
    if let Err(error) = delivery.reject(true).await {
        tracing::debug!(%error, "could not return a message to its queue");
    }
}

/// Declares a cancelled consumer's queue again and consumes it: the new consumer, `None` if the
/// service stopped meanwhile, or why it could not.
async fn reconsume<H: DeliveryHandler>(
    admission: &Arc<Admission<H>>,
    declaration: &QueueDeclaration,
) -> Result<Option<Source>, String> {
    let cx = &admission.cx;
    let (stop, transport) = (cx.stop_token(), cx.transport());
    let mut delay = FIRST_RECONSUME_DELAY;
    let mut last_error = String::new();
    for _ in 0..RECONSUME_ATTEMPTS {
        let attempt = async {
            declaration
                .declare(transport)
                .await
                .map_err(|e| e.to_string())?;
            Source::open(admission, declaration)
                .await
                .map_err(|e| e.to_string())
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(consumer) => return Ok(Some(consumer)),
            Err(error) => {
                if transport.connection_lost() {
                    return Err("it ended with the connection".to_owned());
                }
                let queue = declaration.queue();
                tracing::warn!(%queue, %error, "could not consume the queue again; trying again in {delay:?}");
                last_error = error;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONSUME_DELAY);
    }
    Err(format!(
        "the broker cancelled it, and it could not be consumed again: {last_error}"
    ))
}
