//! The embedded broker's floor: what one in-process RPC call must do, without the framework.
//! The same task hops as a call on the embedded broker (the caller, the queue's consumer, a
//! worker task, the reply listener, the caller again) over tokio channels; the same request and
//! reply envelopes encoded and decoded with serde_json; replies matched to callers by
//! correlation id in a map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// A request on the "queue": its correlation id and body.
struct Request {
    correlation_id: String,
    body: Vec<u8>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// The floor's caller; its consumer, workers and reply listener run on the runtime.
#[derive(Clone)]
pub struct Floor {
    queue: mpsc::UnboundedSender<Request>,
    pending: Pending,
}

#[derive(Serialize)]
struct RequestBody<'a> {
    args: [&'a Value; 1],
    kwargs: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct ParsedRequest {
    args: Vec<Value>,
    #[allow(dead_code)]
    kwargs: HashMap<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    result: Value,
    error: Option<Value>,
}

impl Floor {
    /// Starts the consumer and the reply listener on the current runtime.
    pub fn start() -> Floor {
        let (queue, mut requests) = mpsc::unbounded_channel::<Request>();
        let (replies, mut incoming) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        // The queue's consumer: a worker task per request.
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = match serde_json::from_slice::<ParsedRequest>(&request.body) {
                        Ok(mut parsed) if !parsed.args.is_empty() => Reply {
                            result: parsed.args.swap_remove(0),
                            error: None,
                        },
                        _ => Reply {
                            result: Value::Null,
                            error: Some(Value::from("malformed request")),
                        },
                    };
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    let _ = replies.send((request.correlation_id, body));
                });
            }
        });
        // The reply listener: each reply to its caller.
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some((correlation_id, body)) = incoming.recv().await {
                let waiter = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&correlation_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(body);
                }
            }
        });
        Floor { queue, pending }
    }

    /// One call: `payload` echoed back.
    pub async fn echo(&self, payload: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(&RequestBody {
            args: [payload],
            kwargs: HashMap::new(),
        })?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation_id.clone(), tx);
        self.queue
            .send(Request {
                correlation_id,
                body,
            })
            .map_err(|_| anyhow::anyhow!("the floor's consumer stopped"))?;
        let reply: Reply = serde_json::from_slice(&rx.await?)?;
        match reply.error {
            None => Ok(reply.result),
            Some(error) => anyhow::bail!("{error}"),
        }
    }
}
