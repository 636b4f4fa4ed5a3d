//! The three-node RabbitMQ cluster of `tests/cluster.sh`, for `tests/cluster.rs` and
//! `benches/cluster.rs`: a virtual host of one's own on it, each node's address, its
//! management API, and stopping, killing or starting a node.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The three nodes.
pub const NODES: [&str; 3] = ["c1", "c2", "c3"];

/// The cluster of `tests/cluster.sh`, with a virtual host of this scenario's own.
pub struct Cluster {
    /// Each node's AMQP URI, with the virtual host.
    pub amqp: Vec<String>,
    /// Each node's management API (`http://user:password@host:port`).
    pub api: Vec<String>,
    /// `tests/cluster.sh`.
    pub ctl: String,
    pub vhost: String,
}

impl Cluster {
    /// A new virtual host on the cluster the environment names (`tests/cluster.sh env`), or
    /// `None` when it names none.
    pub fn from_env() -> Option<Cluster> {
        let vars = (
            std::env::var("NAMEKO_TEST_CLUSTER_AMQP"),
            std::env::var("NAMEKO_TEST_CLUSTER_API"),
            std::env::var("NAMEKO_TEST_CLUSTER_CTL"),
        );
        let (Ok(amqp), Ok(api), Ok(ctl)) = vars else {
            return None;
        };
        let api: Vec<String> = api.split(';').map(str::to_owned).collect();
        let vhost = format!(
            "nameko_cluster_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let cluster = Cluster {
            amqp: amqp
                .split(';')
                .map(|uri| format!("{}/{vhost}", uri.trim_end_matches('/')))
                .collect(),
            api,
            ctl,
            vhost,
        };
        cluster
            .request("PUT", &format!("/api/vhosts/{}", cluster.vhost), "")
            .expect("create a virtual host on the cluster");
        cluster
            .request(
                "PUT",
                &format!("/api/permissions/{}/guest", cluster.vhost),
                r#"{"configure":".*","write":".*","read":".*"}"#,
            )
            .expect("permissions on the virtual host");
        Some(cluster)
    }

    /// The addresses of all three nodes, `first` first: an instance or client given them
    /// connects to `first`, and to the others when it is lost.
    pub fn uri_from(&self, first: usize) -> String {
        (0..3)
            .map(|i| self.amqp[(first + i) % 3].as_str())
            .collect::<Vec<_>>()
            .join(";")
    }

    /// `tests/cluster.sh <action> <node>`, off the runtime's threads.
    pub async fn ctl(&self, action: &'static str, node: usize) -> Duration {
        let (ctl, name) = (self.ctl.clone(), NODES[node]);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let status = Command::new(&ctl)
                .args([action, name])
                .stdout(Stdio::null())
                .status()
                .expect("run tests/cluster.sh");
            assert!(status.success(), "tests/cluster.sh {action} {name} failed");
            started.elapsed()
        })
        .await
        .expect("tests/cluster.sh")
    }

    /// A request to the management API of the first node that answers.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<String, String> {
        let mut last = String::new();
        for api in &self.api {
            match http(api, method, path, body) {
                Ok(text) => return Ok(text),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The index of the node holding `queue`'s leader (quorum) or its only copy (classic).
    pub fn leader(&self, queue: &str) -> Option<usize> {
        let info = self
            .request("GET", &format!("/api/queues/{}/{queue}", self.vhost), "")
            .ok()?;
        let info: serde_json::Value = serde_json::from_str(&info).ok()?;
        let node = info
            .get("leader")
            .or_else(|| info.get("node"))?
            .as_str()?
            .to_owned();
        NODES
            .iter()
            .position(|n| node.starts_with(&format!("{n}@")))
    }

    /// How many consumers `queue` has.
    pub fn consumers(&self, queue: &str) -> usize {
        self.request("GET", &format!("/api/queues/{}/{queue}", self.vhost), "")
            .ok()
            .and_then(|info| serde_json::from_str::<serde_json::Value>(&info).ok())
            .and_then(|info| info.get("consumers")?.as_u64())
            .unwrap_or(0) as usize
    }

    /// Waits (up to 60 s) until `queue` has `count` consumers.
    pub async fn wait_for_consumers(&self, queue: &str, count: usize) {
        for _ in 0..600 {
            if self.consumers(queue) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{queue} did not get {count} consumers within 60 s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.request("DELETE", &format!("/api/vhosts/{}", self.vhost), "") {
            eprintln!("could not delete the virtual host {}: {e}", self.vhost);
        }
    }
}

/// One request to a management API, in HTTP/1.0: the body on success.
fn http(api: &str, method: &str, path: &str, body: &str) -> Result<String, String> {
    let rest = api
        .strip_prefix("http://")
        .ok_or("the API is not http://")?;
    let (credentials, host) = rest.split_once('@').ok_or("no user in the API's URI")?;
    let auth = base64(credentials.as_bytes());
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(body.to_owned())
    } else {
        Err(format!("{method} {path}: {status} {body}"))
    }
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
