//! The `#[consume]` entrypoint, on the public entrypoint API: the queue (with its exchange and
//! binding) declared at start and consumed for as long as the service runs; each message runs
//! one worker and is then settled as [`handle_json_message`] says.

use std::sync::Arc;

use super::Queue;
use crate::error::Error;
use crate::events::handler::{JsonMessageEntrypoint, MessageConsumer, Subject};
use crate::events::{EventBody, EventError};
use crate::service::{Entrypoint, EntrypointContext, QueueDeclaration, Started};

/// `#[consume(queue = ...)]`: the method takes every message of a queue (Nameko's `consume`).
#[derive(Debug, Clone)]
pub struct Consume {
    queue: Queue,
    requeue_on_error: bool,
}

impl Consume {
    /// Consumes `queue`; a failed message is acknowledged (and logged), not requeued.
    pub fn new(queue: Queue) -> Self {
        Consume {
            queue,
            requeue_on_error: false,
        }
    }

    /// Whether a message whose method failed goes back to the queue.
    pub fn requeue_on_error(mut self, requeue_on_error: bool) -> Self {
        self.requeue_on_error = requeue_on_error;
        self
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}

impl Entrypoint for Consume {
    type Input = EventBody;
    type Output = Result<(), EventError>;

    fn describe(&self, method: &str) -> String {
        format!("consume {method} <- {}", self.queue.name())
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        // A durable queue that names no type takes the service's `QUEUE_TYPE`.
        let mut spec = self.queue.spec().clone();
        if spec.durable
            && !spec.exclusive
            && !spec.auto_delete
            && spec.arguments.queue_type.is_none()
        {
            let owned = cx.config().owned_queue_arguments(&spec.name);
            spec.arguments.queue_type = owned.queue_type;
            spec.arguments.delivery_limit = spec.arguments.delivery_limit.or(owned.delivery_limit);
        }
        let mut declaration = QueueDeclaration::new(spec);
        if let Some((exchange, routing_key)) = self.queue.binding() {
            let arguments = self.queue.binding_arguments().clone();
            declaration = declaration.bind_with(exchange.spec().clone(), routing_key, arguments);
        }
        let handler = Arc::new(MessageConsumer {
            entrypoint: self,
            cx: cx.clone(),
        });
        cx.consume(declaration, handler).await
    }
}

impl JsonMessageEntrypoint for Consume {
    fn subject(&self) -> Subject<'_> {
        Subject::Queue(self.queue.name())
    }

    fn requeue_on_error(&self) -> bool {
        self.requeue_on_error
    }
}
