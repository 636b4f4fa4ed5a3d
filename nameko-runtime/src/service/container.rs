//! One running service: its consumer, its workers, their limit, and its stop.
//!
//! The path of an RPC request: the consumer of `rpc-<service>` yields a delivery; the loop waits
//! for a free worker slot (`max_workers`) and spawns a worker; the worker reads the method from
//! the routing key and the arguments from the body, runs the handler inside a
//! [`WorkerContext`], publishes the reply to the RPC exchange with the request's `reply_to` as
//! routing key, and only then acknowledges the request.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::runner::Shared;
use super::{DependencyContext, Entrypoint, RpcEntrypoint, Service};
use crate::context::WorkerContext;
use crate::error::Error;
use crate::protocol::{self, CONTENT_TYPE_JSON, MalformedRequest, RemoteError, RequestBody};
use crate::transport::{Consumer, Delivery, ExchangeSpec, OutgoingMessage, Properties, QueueSpec};

/// A started service. Stop it through the runner's [`StopHandle`](super::runner::StopHandle).
pub struct ServiceContainer {
    pub(crate) name: &'static str,
    pub(crate) task: JoinHandle<Result<(), Error>>,
}

/// The error object for a panic, with the panic's message.
pub(crate) fn panic_error(payload: &(dyn std::any::Any + Send)) -> RemoteError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    RemoteError::new("WorkerPanic", message).with_path("nameko_rs.WorkerPanic")
}

/// Starts the container of service `S`: builds its dependencies, declares its queue and starts
/// consuming.
pub(crate) fn start<S: Service>(
    shared: Shared,
) -> futures_util::future::BoxFuture<'static, Result<ServiceContainer, Error>> {
    Box::pin(async move {
        let cx = DependencyContext::new(S::NAME, shared.config.clone(), shared.transport.clone());
        let service = Arc::new(S::build(&cx).await?);
        let mut rpc = HashMap::new();
        for entrypoint in S::entrypoints() {
            match entrypoint {
                Entrypoint::Rpc(e) => {
                    rpc.insert(e.name, e);
                }
            }
        }
        let consumer = if rpc.is_empty() {
            None
        } else {
            let t = &shared.transport;
            let queue = protocol::rpc_queue_name(S::NAME);
            t.declare_exchange(&ExchangeSpec::durable_topic(&shared.config.rpc_exchange))
                .await?;
            t.declare_queue(&QueueSpec::durable(&queue)).await?;
            t.bind_queue(
                &queue,
                &shared.config.rpc_exchange,
                &protocol::rpc_binding_key(S::NAME),
            )
            .await?;
            Some(t.consume(&queue, shared.config.prefetch_count).await?)
        };
        tracing::info!(
            service = S::NAME,
            rpc = ?{ let mut names: Vec<_> = rpc.keys().copied().collect(); names.sort(); names },
            "service started"
        );
        let rpc = Arc::new(RpcDispatch {
            service,
            handlers: rpc,
            shared: shared.clone(),
        });
        let task = tokio::spawn(run(rpc, consumer, shared));
        Ok(ServiceContainer {
            name: S::NAME,
            task,
        })
    })
}

struct RpcDispatch<S> {
    service: Arc<S>,
    handlers: HashMap<&'static str, RpcEntrypoint<S>>,
    shared: Shared,
}

async fn run<S: Service>(
    rpc: Arc<RpcDispatch<S>>,
    consumer: Option<Consumer>,
    shared: Shared,
) -> Result<(), Error> {
    let Some(mut consumer) = consumer else {
        shared.stop.cancelled().await;
        return Ok(());
    };
    let workers = Arc::new(Semaphore::new(shared.config.max_workers.max(1)));
    let tracker = TaskTracker::new();
    let mut failure = None;
    loop {
        let next = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                failure = Some(format!("consumer of rpc-{} failed: {e}", S::NAME));
                break;
            }
            None => {
                failure = Some(format!(
                    "consumer of rpc-{} was cancelled by the broker",
                    S::NAME
                ));
                break;
            }
        };
        let permit = tokio::select! {
            biased;
            // Not acknowledged: the delivery goes back to the queue.
            _ = shared.stop.cancelled() => break,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let rpc = rpc.clone();
        let kill = shared.kill.clone();
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                // Killed: neither reply nor ack; the broker redelivers the request.
                _ = kill.cancelled() => {}
                _ = rpc.handle(delivery) => {}
            }
        });
    }
    consumer.cancel().await;
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = shared.kill.cancelled() => tracker.wait().await,
        _ = tokio::time::sleep(shared.config.stop_timeout) => {
            tracing::warn!(service = S::NAME, "workers still running after the stop timeout; killing them");
            shared.kill.cancel();
            tracker.wait().await;
        }
    }
    consumer.close().await;
    tracing::info!(service = S::NAME, "service stopped");
    match failure {
        Some(reason) => {
            tracing::error!(service = S::NAME, %reason, "service failed");
            Err(Error::ServiceFailed {
                service: S::NAME.to_owned(),
                reason,
            })
        }
        None => Ok(()),
    }
}

impl<S: Service> RpcDispatch<S> {
    async fn handle(&self, delivery: Delivery) {
        let Some(reply_to) = delivery.properties.reply_to.clone() else {
            tracing::error!(
                service = S::NAME,
                routing_key = %delivery.routing_key,
                "rejected an RPC request without reply_to: there is nowhere to send its reply"
            );
            if let Err(e) = delivery.reject(false).await {
                tracing::warn!(error = %e, "could not reject a request");
            }
            return;
        };
        if delivery.properties.correlation_id.is_none() {
            tracing::warn!(
                service = S::NAME,
                routing_key = %delivery.routing_key,
                "RPC request without correlation_id: its caller cannot match the reply"
            );
        }
        let method = delivery
            .routing_key
            .strip_prefix(S::NAME)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(&delivery.routing_key)
            .to_owned();
        let reply = self.call(&method, &delivery).await;
        let reply_body = match &reply {
            Ok(result) => protocol::encode_reply_result(result),
            Err(error) => protocol::encode_reply_error(error),
        };
        let message = OutgoingMessage {
            exchange: self.shared.config.rpc_exchange.clone(),
            routing_key: reply_to,
            mandatory: false,
            properties: Properties {
                correlation_id: delivery.properties.correlation_id.clone(),
                ..Properties::nameko_json()
            },
            body: reply_body,
        };
        match self.shared.transport.publish(message).await {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(service = S::NAME, error = %e, "could not acknowledge a request");
                }
            }
            Err(e) => {
                tracing::error!(service = S::NAME, %method, error = %e, "could not publish a reply; requeueing the request");
                if let Err(e) = delivery.reject(true).await {
                    tracing::warn!(error = %e, "could not requeue a request");
                }
            }
        }
    }

    async fn call(&self, method: &str, delivery: &Delivery) -> Result<Vec<u8>, RemoteError> {
        let Some(entrypoint) = self.handlers.get(method) else {
            tracing::warn!(service = S::NAME, %method, "MethodNotFound");
            return Err(RemoteError::nameko("MethodNotFound", method.to_owned()));
        };
        let body = match delivery.properties.content_type.as_deref() {
            None | Some(CONTENT_TYPE_JSON) => RequestBody::parse(&delivery.body),
            Some(other) => Err(MalformedRequest::ContentType(other.to_owned())),
        };
        let body = body.map_err(|e| {
            tracing::warn!(service = S::NAME, %method, error = %e, "MalformedRequest");
            RemoteError::nameko("MalformedRequest", e.to_string())
        })?;
        let context = Arc::new(WorkerContext::new(
            S::NAME,
            entrypoint.name,
            &delivery.properties.headers,
            self.shared.config.parent_calls_tracked,
        ));
        let call_id = context.call_id().to_owned();
        let future = (entrypoint.handler)(self.service.clone(), body);
        let outcome = context.scope(AssertUnwindSafe(future).catch_unwind()).await;
        match outcome {
            Ok(Ok(result)) => {
                tracing::debug!(service = S::NAME, %method, %call_id, "worker finished");
                Ok(result)
            }
            Ok(Err(error)) => {
                tracing::warn!(service = S::NAME, %method, %call_id, error = %error, "worker failed");
                Err(error)
            }
            Err(panic) => {
                let error = panic_error(panic.as_ref());
                tracing::error!(service = S::NAME, %method, %call_id, panic = %error.value, "worker panicked");
                Err(error)
            }
        }
    }
}
