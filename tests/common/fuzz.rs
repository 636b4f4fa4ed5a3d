//! Fuzzed Nameko requests, the same sequence for the same seed.

use serde_json::json;

/// A small deterministic generator for fuzzed inputs (xorshift64*).
pub struct Fuzz(pub u64);

impl Fuzz {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A request body: a valid one mutated, random bytes, or something pathological.
    pub fn body(&mut self) -> Vec<u8> {
        let valid: &[&[u8]] = &[
            br#"{"args": [1, 2], "kwargs": {}}"#,
            br#"{"args": [], "kwargs": {"a": 1, "b": "x"}}"#,
            br#"{"args": [{"deep": [1, [2, [3]]]}], "kwargs": {}}"#,
        ];
        let mut body = valid[self.below(valid.len())].to_vec();
        match self.below(6) {
            0 => {
                for _ in 0..=self.below(4) {
                    let i = self.below(body.len());
                    body[i] ^= 1 << self.below(8);
                }
            }
            1 => body.truncate(self.below(body.len())),
            2 => body = (0..self.below(64)).map(|_| self.next() as u8).collect(),
            3 => body = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            4 => body.extend((0..self.below(16)).map(|_| 0xff)),
            _ => {
                let i = self.below(body.len());
                body.insert(i, self.next() as u8);
            }
        }
        body
    }

    /// Headers of every type a broker can carry, some where Nameko expects others.
    pub fn headers(&mut self) -> nameko::protocol::Headers {
        let values = [
            json!(42),
            json!({"nested": [1, 2]}),
            json!(null),
            json!([1, "two", {"three": 3}]),
            json!("text"),
            json!(true),
        ];
        let keys = [
            "nameko.call_id_stack",
            "nameko.auth_token",
            "nameko.language",
            "x-custom",
        ];
        (0..self.below(4))
            .map(|_| {
                (
                    keys[self.below(keys.len())].to_owned(),
                    values[self.below(values.len())].clone(),
                )
            })
            .collect()
    }
}

impl Fuzz {
    /// A fuzzed request to `service`: one of `methods` (or a name the service lacks, or one its
    /// binding does not match), usually replying to `reply_key`, with any content type, odd
    /// headers and a fuzzed body. Says whether the service will reply: the message names a
    /// reply queue and the broker routes it to the service.
    pub fn request(
        &mut self,
        service: &str,
        methods: &[&str],
        reply_key: &str,
    ) -> (nameko::transport::OutgoingMessage, bool) {
        use nameko::transport::{OutgoingMessage, Properties};
        let has_reply_to = self.below(8) != 0;
        let method = match self.below(methods.len() + 3) {
            i if i < methods.len() => methods[i].to_owned(),
            i if i == methods.len() => "no_such_method".to_owned(),
            i if i == methods.len() + 1 => String::new(),
            // `service.a.b` matches no binding (`service.*`): the broker drops it.
            _ => format!("{}.extra", methods[0]),
        };
        let content_types = [
            Some("application/json"),
            None,
            Some("text/plain"),
            Some("application/x-python-serialize"),
        ];
        let replies = has_reply_to && !method.contains('.');
        let message = OutgoingMessage {
            exchange: "nameko-rpc".into(),
            routing_key: format!("{service}.{method}"),
            mandatory: false,
            properties: Properties {
                reply_to: has_reply_to.then(|| reply_key.to_owned()),
                correlation_id: (self.below(4) != 0).then(|| format!("fuzz-{}", self.next())),
                content_type: content_types[self.below(content_types.len())]
                    .map(std::borrow::Cow::Borrowed),
                headers: self.headers(),
                ..Properties::nameko_json()
            },
            body: self.body(),
        };
        (message, replies)
    }
}
