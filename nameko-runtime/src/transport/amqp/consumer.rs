//! A lapin consumer as a [`Consumer`]: its deliveries, their acknowledgements, its cancel.

use super::*;

pub(crate) struct AmqpAcker(lapin::Acker);

impl AmqpAcker {
    pub(crate) async fn ack(self) -> Result<(), TransportError> {
        settled("acknowledge", self.0.ack(BasicAckOptions::default()).await)
    }

    pub(crate) async fn reject(self, requeue: bool) -> Result<(), TransportError> {
        settled(
            "reject",
            self.0.reject(BasicRejectOptions { requeue }).await,
        )
    }
}

/// lapin's answer to a settlement: `Ok(false)` means it was not sent (the delivery's channel
/// is gone, so the broker redelivers the message), which is an error for the caller to log.
pub(super) fn settled(what: &str, result: lapin::Result<bool>) -> Result<(), TransportError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(TransportError::Connection(format!(
            "could not {what} the message: its channel is closed (the broker will deliver it again)"
        ))),
        Err(e) => Err(connection_error(e)),
    }
}

pub(super) struct AmqpConsumer {
    pub(super) channel: Channel,
    pub(super) consumer: lapin::Consumer,
    pub(super) cancelled: bool,
    /// The exchange of the last delivery: a consumer's messages mostly come from one, so its
    /// name is shared rather than copied for each.
    pub(super) exchange: Arc<str>,
}

impl ConsumerSource for AmqpConsumer {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery, TransportError>>> {
        loop {
            let d = match std::pin::Pin::new(&mut self.consumer).poll_next(cx) {
                Poll::Ready(Some(Ok(d))) => d,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(connection_error(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let Some(properties) = from_basic_properties(&d.properties) else {
                // Nothing a handler could read: dropped (dead-lettered where the queue has a
                // dead-letter exchange), and the consumer goes on.
                tracing::error!(
                    exchange = %d.exchange,
                    routing_key = %d.routing_key,
                    max_depth = MAX_HEADER_DEPTH,
                    "rejected a message whose headers nest too deeply"
                );
                let acker = d.acker;
                tokio::spawn(async move {
                    if let Err(e) = acker.reject(BasicRejectOptions { requeue: false }).await {
                        tracing::warn!(error = %e, "could not reject a message");
                    }
                });
                continue;
            };
            if *self.exchange != *d.exchange.as_str() {
                self.exchange = Arc::from(d.exchange.as_str());
            }
            return Poll::Ready(Some(Ok(Delivery::settled_by(
                self.exchange.clone(),
                d.routing_key.as_str().to_owned(),
                d.redelivered,
                properties,
                d.data,
                Settler::Amqp(AmqpAcker(d.acker)),
            ))));
        }
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if !self.cancelled && self.channel.status().connected() {
                self.cancelled = true;
                let tag = self.consumer.tag();
                if let Err(e) = self
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(error = %e, "consumer cancel failed");
                }
            }
        }
        .boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if self.channel.status().connected() {
                let _ = self.channel.close(200, "OK".into()).await;
            }
        }
        .boxed()
    }
}
