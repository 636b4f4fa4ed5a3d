//! The RPC entrypoint (`#[rpc]`), on the public entrypoint API: the methods of a service share
//! one consumer of `rpc-<service>` ([`RpcConsumer`], a shared extension), which finds the
//! method from the routing key, runs its worker, publishes the reply and acknowledges the
//! request. Also `#[dummy]`, whose arguments bind as an RPC method's but which never fires by
//! itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::context::Incoming;
use crate::discovery::{RpcMethod, ServiceDescription};
use crate::error::Error;
use crate::protocol::{self, MalformedRequest, RemoteError, RequestBody};
use crate::service::{
    DeliveryHandler, Entrypoint, EntrypointContext, QueueDeclaration, ServiceContext,
    SharedExtension, Started, WorkerSlot,
};
use crate::transport::{
    Delivery, ExchangeSpec, OutgoingMessage, Properties, QueueSpec, TransportError, Unpublished,
};

/// `#[rpc]`: the method answers calls to `<service>.<name>` on the RPC exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rpc;

impl Entrypoint for Rpc {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        format!("rpc {method}")
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        let consumer = cx.service_extension(RpcConsumer::default);
        consumer.register(cx.clone());
        Ok(Started::idle())
    }
}

/// `#[dummy]`: never fires by itself; tests fire it with an entrypoint hook, its arguments
/// bound as an RPC method's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dummy;

impl Entrypoint for Dummy {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        format!("dummy {method}")
    }

    async fn start(self, _cx: EntrypointContext<Self>) -> Result<Started, Error> {
        Ok(Started::idle())
    }
}

/// The consumer the RPC methods of one service share (Nameko's `RpcConsumer`): it declares
/// `rpc-<service>` bound with `<service>.*` and consumes it once every method registered.
#[derive(Default)]
pub struct RpcConsumer {
    methods: Mutex<Vec<EntrypointContext<Rpc>>>,
}

impl std::fmt::Debug for RpcConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcConsumer").finish_non_exhaustive()
    }
}

impl RpcConsumer {
    fn register(&self, method: EntrypointContext<Rpc>) {
        self.methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(method);
    }
}

impl SharedExtension for RpcConsumer {
    async fn start(self: Arc<Self>, cx: ServiceContext) -> Result<Started, Error> {
        let methods = std::mem::take(&mut *self.methods.lock().unwrap_or_else(|p| p.into_inner()));
        let service = cx.service_name();
        let exchange = ExchangeSpec::durable_topic(&cx.config().rpc_exchange);
        let queue = protocol::rpc_queue_name(service);
        let spec = QueueSpec {
            arguments: cx.config().owned_queue_arguments(&queue),
            ..QueueSpec::durable(queue)
        };
        let declaration =
            QueueDeclaration::new(spec).bind(exchange, protocol::rpc_binding_key(service));
        let handler = Arc::new(RpcHandler {
            service,
            exchange: cx.config().rpc_exchange.as_str().into(),
            methods,
            cx: cx.clone(),
        });
        cx.consume(declaration, handler).await
    }
}

struct RpcHandler {
    service: &'static str,
    /// The RPC exchange, where replies go.
    exchange: Arc<str>,
    methods: Vec<EntrypointContext<Rpc>>,
    cx: ServiceContext,
}

impl DeliveryHandler for RpcHandler {
    /// The caller waits for the reply: on the embedded broker, a method done at its first poll
    /// runs on the caller's task.
    const POLL_ON_ARRIVAL: bool = true;

    fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        slot: WorkerSlot,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Boxed: the future (a task of its own) then holds a pointer, not the whole delivery,
        // and is moved and copied into the task for a fraction of what it would cost.
        self.reply(Box::new(delivery), slot)
    }

    async fn give_up(self: Arc<Self>, delivery: Delivery, reason: String) {
        let service = self.service;
        tracing::error!(
            service,
            routing_key = %delivery.routing_key,
            %reason,
            "gave up an RPC request: its method does not run again"
        );
        if let Some(reply_to) = delivery.properties.reply_to.clone() {
            let error = RemoteError::nameko_rs(
                "RedeliveryLimitExceeded",
                format!("the request to {} was {reason}", delivery.routing_key),
            );
            let reply = Err(error);
            let correlation_id = delivery.properties.correlation_id.as_deref();
            if let Err(error) = self.publish_reply(&reply_to, correlation_id, &reply).await {
                tracing::warn!(service, %error, "could not tell the caller");
            }
        }
        if let Err(error) = delivery.reject(false).await {
            tracing::warn!(service, %error, "could not reject a request");
        }
    }
}

/// A reply's body: Nameko's `{"result", "error"}` (a result written around in its own buffer).
fn encode_reply(reply: Result<Vec<u8>, RemoteError>) -> Vec<u8> {
    match reply {
        Ok(result) => protocol::wrap_reply_result(result),
        Err(error) => protocol::encode_reply_error(&error),
    }
}

/// A request's answer where no worker runs, as [`RpcHandler::start`] returns a worker's.
fn answered<'a>(
    answer: Result<Vec<u8>, RemoteError>,
) -> BoxFuture<'a, Option<Result<Vec<u8>, RemoteError>>> {
    Box::pin(std::future::ready(Some(answer)))
}

/// How many times a reply is published before the request is given up (the method never runs
/// twice for one delivery).
const REPLY_PUBLISH_ATTEMPTS: u32 = 3;
/// The wait before publishing a reply again; it doubles.
const FIRST_REPLY_RETRY_DELAY: Duration = Duration::from_millis(100);

impl RpcHandler {
    // Not an `async fn`: that would keep its arguments twice in the future's state (once as
    // arguments, once as the locals they are moved to), and this future is every request's.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would copy its arguments"
    )]
    fn reply(
        self: Arc<Self>,
        mut delivery: Box<Delivery>,
        slot: WorkerSlot,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let service = self.service;
            if delivery.properties.reply_to.is_none() {
                tracing::error!(
                    service,
                    routing_key = %delivery.routing_key,
                    "rejected an RPC request without reply_to: there is nowhere to send its reply"
                );
                // Boxed: rare, and a settlement's state must not enlarge every request's future.
                if let Err(e) = Box::pin(delivery.reject(false)).await {
                    tracing::warn!(error = %e, "could not reject a request");
                }
                return;
            };
            if delivery.properties.correlation_id.is_none() {
                tracing::warn!(
                    service,
                    routing_key = %delivery.routing_key,
                    "RPC request without correlation_id: its caller cannot match the reply"
                );
            }
            // Only the worker's boxed future is held across the wait: this future is spawned
            // for every request, and moved and copied whole.
            let Some(reply) = self.start(&delivery, slot).await else {
                // Killed: neither answered nor acknowledged; the broker redelivers it.
                return;
            };
            // The reply takes the request's `reply_to` and `correlation_id` rather than copies;
            // a reply not published hands them back, and the request is whole again.
            let message = OutgoingMessage {
                exchange: self.exchange.clone(),
                routing_key: delivery.properties.reply_to.take().unwrap_or_default(),
                mandatory: false,
                properties: Properties {
                    correlation_id: delivery.properties.correlation_id.take(),
                    ..Properties::nameko_json()
                },
                body: encode_reply(reply),
            };
            let Err(unpublished) = self.cx.transport().publish_or_return(message).await else {
                if let Err(e) = delivery.ack_at_once().await {
                    tracing::warn!(service, error = %e, "could not acknowledge a request");
                }
                return;
            };
            // Boxed: rare, and its state must not enlarge every request's future.
            Box::pin(self.reply_again(*delivery, unpublished)).await;
        }
    }

    /// A reply whose first publish failed: published again where the failure may pass, or the
    /// request settled as [`reply_failed`](Self::reply_failed) says.
    async fn reply_again(&self, mut delivery: Delivery, unpublished: Box<Unpublished>) {
        match self.publish_again(unpublished).await {
            Ok(()) => {
                if let Err(e) = delivery.ack_at_once().await {
                    let service = self.service;
                    tracing::warn!(service, error = %e, "could not acknowledge a request");
                }
            }
            Err(unpublished) => {
                let Unpublished { error, message } = *unpublished;
                delivery.properties.reply_to = Some(message.routing_key);
                delivery.properties.correlation_id = message.properties.correlation_id;
                self.reply_failed(delivery, error).await
            }
        }
    }

    /// Finds the method, reads the request and starts the worker: its future, the reply or
    /// `None` if the service was killed meanwhile. Where no worker runs (no such method, a
    /// malformed request, the service's description), the answer.
    fn start<'a>(
        &'a self,
        delivery: &'a Delivery,
        slot: WorkerSlot,
    ) -> BoxFuture<'a, Option<Result<Vec<u8>, RemoteError>>> {
        let service = self.service;
        let method = delivery
            .routing_key
            .strip_prefix(service)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(&delivery.routing_key);
        let Some(entrypoint) = self.methods.iter().find(|e| e.method().name() == method) else {
            if method == protocol::DESCRIBE_METHOD {
                return answered(self.describe());
            }
            tracing::warn!(service, %method, "MethodNotFound");
            return answered(Err(RemoteError::nameko(
                "MethodNotFound",
                method.to_owned(),
            )));
        };
        // A body that opens as clients send them is read when the method's parameters are
        // bound (`BoundArgs`), in one pass if it is laid out as they send it; any other is read
        // now, and refused here if malformed.
        let content_type = delivery.properties.content_type.as_deref();
        let body = match content_type {
            _ if protocol::is_json(content_type) => RequestBody::unread(&delivery.body),
            Some(other) => Err(MalformedRequest::ContentType(protocol::shorten(
                other.to_owned(),
            ))),
            None => RequestBody::unread(&delivery.body),
        };
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(service, %method, error = %e, "MalformedRequest");
                return answered(Err(e.into()));
            }
        };
        let incoming = Incoming::from_headers(&delivery.properties.headers);
        entrypoint.run_worker_from(slot, body, incoming, Some(&delivery.body))
    }

    /// The service's description, the answer to [`protocol::DESCRIBE_METHOD`] (no worker runs).
    fn describe(&self) -> Result<Vec<u8>, RemoteError> {
        let rpc = self
            .methods
            .iter()
            .map(|e| {
                let info = e.method();
                RpcMethod::new(info.name(), info.params(), info.signature())
            })
            .collect();
        let description =
            ServiceDescription::new(self.service, rpc, self.cx.entrypoint_lines().to_vec());
        serde_json::to_vec(&description)
            .map_err(|e| RemoteError::nameko_rs("SerializationError", e.to_string()))
    }

    /// Publishes a reply (Nameko's `{"result", "error"}`), again on a failure that may pass (a
    /// channel closed under it, a nack), up to [`REPLY_PUBLISH_ATTEMPTS`] times.
    async fn publish_reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &Result<Vec<u8>, RemoteError>,
    ) -> Result<(), TransportError> {
        let message = self.reply_message(reply_to, correlation_id, reply);
        match self.cx.transport().publish_or_return(message).await {
            Ok(()) => Ok(()),
            // Boxed: rare, and its state (a timer among it) must not enlarge every request's.
            Err(unpublished) => Box::pin(self.publish_again(unpublished))
                .await
                .map_err(|unpublished| unpublished.error),
        }
    }

    /// The attempts after the first: the message handed back by the last one that failed.
    async fn publish_again(
        &self,
        mut unpublished: Box<Unpublished>,
    ) -> Result<(), Box<Unpublished>> {
        let transport = self.cx.transport();
        let mut delay = FIRST_REPLY_RETRY_DELAY;
        for attempt in 1..REPLY_PUBLISH_ATTEMPTS {
            let passing = matches!(
                unpublished.error,
                TransportError::Connection(_) | TransportError::Nacked
            );
            if !passing || transport.connection_lost() {
                break;
            }
            let (service, error) = (self.service, &unpublished.error);
            tracing::warn!(service, %error, attempt, "could not publish a reply; publishing it again");
            tokio::time::sleep(delay).await;
            delay *= 2;
            match transport.publish_or_return(unpublished.message).await {
                Ok(()) => return Ok(()),
                Err(again) => unpublished = again,
            }
        }
        Err(unpublished)
    }

    /// The reply message to `reply_to`.
    fn reply_message(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &Result<Vec<u8>, RemoteError>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            exchange: self.exchange.clone(),
            routing_key: reply_to.to_owned(),
            mandatory: false,
            properties: Properties {
                correlation_id: correlation_id.map(str::to_owned),
                ..Properties::nameko_json()
            },
            body: match reply {
                Ok(result) => protocol::encode_reply_result(result),
                Err(error) => protocol::encode_reply_error(error),
            },
        }
    }

    /// A reply that could not be published: the caller is told so if a small error reply
    /// gets through (the request is then acknowledged: it has its answer); otherwise the
    /// request is rejected without requeue (dead-lettered where the queue has a dead-letter
    /// exchange). Never requeued: that would run the method again, with its side effects. On a
    /// lost connection nothing can be settled, and the broker redelivers the request.
    async fn reply_failed(&self, delivery: Delivery, error: TransportError) {
        let (service, method) = (self.service, delivery.routing_key.as_str());
        if self.cx.transport().connection_lost() {
            tracing::error!(service, %method, %error, "could not publish a reply: the connection is lost, the request will be redelivered");
            return;
        }
        tracing::error!(service, %method, %error, "could not publish a reply; the method will not run again");
        if let Some(reply_to) = delivery.properties.reply_to.as_deref() {
            let failure = RemoteError::nameko_rs(
                "ReplyPublishError",
                format!("the reply of {method} could not be sent: {error}"),
            );
            let correlation_id = delivery.properties.correlation_id.as_deref();
            if self
                .publish_reply(reply_to, correlation_id, &Err(failure))
                .await
                .is_ok()
            {
                if let Err(e) = delivery.ack_at_once().await {
                    tracing::warn!(service, error = %e, "could not acknowledge a request");
                }
                return;
            }
        }
        if let Err(e) = delivery.reject(false).await {
            tracing::warn!(service, error = %e, "could not reject a request");
        }
    }
}
