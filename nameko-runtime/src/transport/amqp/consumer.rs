//! A lapin consumer as a [`Consumer`]: its deliveries, their acknowledgements, its cancel.

use super::*;

/// Settles one delivery on the channel that delivered it.
///
/// The settlement is handed to the channel, not waited for: once it is queued, nothing is left
/// to decide. One lost with its connection (a failed write, or frames dropped as the connection
/// fails) is not reported here: the message stays unsettled and RabbitMQ delivers it again, as
/// it would any other, and the connection's watcher reports the loss. Waiting would cost a task
/// wake-up per message, and going through lapin's `Acker` two more tasks besides.
///
/// This relies on lapin's `Channel::basic_ack` and `basic_reject` queuing their frame when
/// first polled, before they wait for it to be written (so in the lapin version the workspace
/// pins; `tests/transport_conformance.rs` fails if a settlement is lost). The `Channel` is the
/// delivery's own: once closed it stays closed, so a delivery tag is never settled on a later
/// channel that reuses its number. (Not so with lapin's automatic recovery, which the transport
/// does not enable: it reopens channels in place and numbers deliveries from 1 again.)
pub(crate) struct AmqpAcker {
    channel: Arc<Channel>,
    delivery_tag: u64,
}

impl AmqpAcker {
    /// Acknowledges (`reject: None`) or rejects (`Some(requeue)`) the delivery now: queued on
    /// its channel, or an error if the channel is closed (RabbitMQ then delivers it again).
    pub(crate) fn settle(self, reject: Option<bool>) -> Result<(), TransportError> {
        let (what, queued) = match reject {
            None => (
                "acknowledge",
                self.channel
                    .basic_ack(self.delivery_tag, BasicAckOptions::default())
                    .now_or_never(),
            ),
            Some(requeue) => (
                "reject",
                self.channel
                    .basic_reject(self.delivery_tag, BasicRejectOptions { requeue })
                    .now_or_never(),
            ),
        };
        match queued {
            // Pending: queued, for the connection's I/O loop to write.
            None | Some(Ok(())) => Ok(()),
            Some(Err(e)) if !self.channel.status().connected() => {
                Err(TransportError::Connection(format!(
                    "could not {what} the message: its channel is closed (the broker will \
                     deliver it again): {e}"
                )))
            }
            Some(Err(e)) => Err(connection_error(e)),
        }
    }
}

pub(super) struct AmqpConsumer {
    /// Shared with the ackers of its deliveries.
    pub(super) channel: Arc<Channel>,
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
                let acker = AmqpAcker {
                    channel: self.channel.clone(),
                    delivery_tag: d.delivery_tag,
                };
                if let Err(e) = acker.settle(Some(false)) {
                    tracing::warn!(error = %e, "could not reject a message");
                }
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
                Settler::Amqp(AmqpAcker {
                    channel: self.channel.clone(),
                    delivery_tag: d.delivery_tag,
                }),
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
