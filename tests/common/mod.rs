//! Shared by the integration tests: brokers (embedded, or RabbitMQ with a virtual host of
//! their own) and the Python nameko environment.
//!
//! RabbitMQ tests need `NAMEKO_TEST_AMQP_URI` (e.g. `amqp://guest:guest@localhost:5672`) and
//! `NAMEKO_TEST_RABBIT_API` (the management API, e.g. `http://guest:guest@localhost:15672`);
//! interop tests also need `NAMEKO_TEST_PYTHON` (a Python with nameko 2.14.1). `tests/run.sh`
//! sets all three. Without them these tests are skipped, with a message, unless `CI=true` or
//! `NAMEKO_TEST_REQUIRE_BROKER=1`, in which case they fail.

#![allow(dead_code)]

pub mod cluster;
pub mod fuzz;
pub mod load;

use nameko::transport::SharedTransport;

/// Whether tests that need a broker must fail rather than skip without one.
pub fn broker_required() -> bool {
    required()
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NAMEKO_TEST_REQUIRE_BROKER").is_ok_and(|v| v == "1")
}

fn missing<T>(what: &str) -> Option<T> {
    if required() {
        panic!(
            "{what} is not configured, and CI=true / NAMEKO_TEST_REQUIRE_BROKER=1 forbids skipping: run tests/run.sh"
        );
    }
    eprintln!("SKIPPED: {what} is not configured (run tests/run.sh to run this test)");
    None
}

/// A broker for one test: `nameko::testing::TestBroker` (an embedded broker, or a RabbitMQ
/// virtual host of its own, deleted on drop), with the skip policy of these tests.
pub struct TestBroker {
    pub uri: String,
    inner: nameko::testing::TestBroker,
}

impl TestBroker {
    /// A new embedded broker of its own.
    pub fn memory() -> TestBroker {
        Self::from(nameko::testing::TestBroker::embedded())
    }

    /// A new RabbitMQ virtual host, or `None` (skip) when RabbitMQ is not configured.
    pub fn amqp() -> Option<TestBroker> {
        let (amqp, api) = rabbitmq()?;
        let broker = nameko::testing::TestBroker::rabbitmq(&amqp, &api)
            .expect("create a virtual host through the RabbitMQ management API");
        Some(Self::from(broker))
    }

    /// The library's broker.
    pub fn inner(&self) -> &nameko::testing::TestBroker {
        &self.inner
    }

    /// Gives the library's broker away (to `TestServices::on`).
    pub fn into_inner(self) -> nameko::testing::TestBroker {
        self.inner
    }

    /// The URI in Python kombu's spelling.
    pub fn python_uri(&self) -> String {
        self.uri.replacen("amqp://", "pyamqp://", 1)
    }

    /// A transport connected to this broker.
    pub async fn connect(&self) -> SharedTransport {
        self.inner
            .connect()
            .await
            .expect("connect to the test broker")
    }
}

impl From<nameko::testing::TestBroker> for TestBroker {
    fn from(inner: nameko::testing::TestBroker) -> Self {
        TestBroker {
            uri: inner.uri().to_owned(),
            inner,
        }
    }
}

/// The RabbitMQ and management API URIs, or `None` (skip) when not configured.
pub fn rabbitmq() -> Option<(String, String)> {
    match (
        std::env::var("NAMEKO_TEST_AMQP_URI"),
        std::env::var("NAMEKO_TEST_RABBIT_API"),
    ) {
        (Ok(amqp), Ok(api)) => Some((amqp, api)),
        _ => missing("RabbitMQ (NAMEKO_TEST_AMQP_URI and NAMEKO_TEST_RABBIT_API)"),
    }
}

/// Headless Chromium (`NAMEKO_TEST_CHROMIUM`, else `chromium` on the path), or `None` (skip)
/// when there is none.
pub fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("NAMEKO_TEST_CHROMIUM") {
        return Some(path);
    }
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match found {
        Some(path) if !path.is_empty() => Some(path),
        _ => missing("Chromium (NAMEKO_TEST_CHROMIUM, or `chromium` on the path)"),
    }
}

/// The Python interpreter with nameko 2.14.1, or `None` (skip) when not configured.
pub fn python() -> Option<String> {
    match std::env::var("NAMEKO_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) => missing("Python nameko (NAMEKO_TEST_PYTHON)"),
    }
}

/// Runs a test body against each transport: the embedded broker always, RabbitMQ when
/// configured.
#[macro_export]
macro_rules! on_both_transports {
    ($(#[$meta:meta])* async fn $name:ident($broker:ident: &TestBroker) $body:block) => {
        mod $name {
            use super::*;
            async fn body($broker: &TestBroker) $body

            #[tokio::test]
            async fn memory() {
                body(&TestBroker::memory()).await
            }

            #[tokio::test]
            async fn amqp() {
                if let Some(broker) = TestBroker::amqp() {
                    body(&broker).await
                }
            }
        }
    };
}

/// The folder of the Python interop scripts.
pub fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// A `nameko run` process of Python services, killed on drop.
pub struct PythonServices {
    child: std::process::Child,
    _config: tempfile_path::TempPath,
}

impl PythonServices {
    /// Runs `nameko run py_services:<classes>` against `broker`.
    pub fn start(python: &str, broker: &TestBroker, classes: &[&str]) -> PythonServices {
        Self::start_with(python, broker, classes, "")
    }

    /// Like [`start`](Self::start), with more of the configuration file (YAML lines).
    pub fn start_with(
        python: &str,
        broker: &TestBroker,
        classes: &[&str],
        more_config: &str,
    ) -> PythonServices {
        Self::start_on(python, &broker.uri, classes, more_config)
    }

    /// Like [`start_with`](Self::start_with), on the RabbitMQ at `uri` (`amqp://...`).
    pub fn start_on(
        python: &str,
        uri: &str,
        classes: &[&str],
        more_config: &str,
    ) -> PythonServices {
        let config = tempfile_path::TempPath::new(
            "yaml",
            &format!(
                "AMQP_URI: '{}'\n{more_config}",
                uri.replacen("amqp://", "pyamqp://", 1)
            ),
        );
        let nameko = std::path::Path::new(python).with_file_name("nameko");
        let mut command = std::process::Command::new(nameko);
        command.arg("run");
        for class in classes {
            command.arg(format!("py_services:{class}"));
        }
        let child = command
            .arg("--config")
            .arg(config.path())
            .current_dir(interop_dir())
            .env("PYTHONPATH", interop_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start `nameko run`");
        PythonServices {
            child,
            _config: config,
        }
    }
}

impl Drop for PythonServices {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `py_client.py`: each call made with Python's `ClusterRpcProxy`, one JSON value each.
pub async fn python_calls(
    python: &str,
    broker: &TestBroker,
    calls: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let output = tokio::process::Command::new(python)
        .arg(interop_dir().join("py_client.py"))
        .arg(broker.python_uri())
        .arg(calls.to_string())
        .output()
        .await
        .expect("run py_client.py");
    assert!(
        output.status.success(),
        "py_client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// A throwaway queue bound to `nameko-rpc` for hand-made requests' replies: the routing key to
/// put in `reply_to`, and a consumer of the queue (deleted when the consumer goes).
pub async fn reply_queue(t: &SharedTransport) -> (String, nameko::transport::Consumer) {
    use nameko::transport::{ExchangeSpec, QueueSpec};
    let reply_key = uuid::Uuid::new_v4().to_string();
    let queue = format!("test-replies-{reply_key}");
    t.declare_exchange(&ExchangeSpec::durable_topic("nameko-rpc"))
        .await
        .unwrap();
    t.declare_queue(&QueueSpec {
        auto_delete: true,
        ..QueueSpec::durable(&queue)
    })
    .await
    .unwrap();
    t.bind_queue(&queue, "nameko-rpc", &reply_key)
        .await
        .unwrap();
    let replies = t.consume(&queue, 0).await.unwrap();
    (reply_key, replies)
}

/// Waits (up to 60 s) until the RabbitMQ management API makes virtual hosts again, e.g. after a
/// broker restart.
pub async fn wait_for_management_api() {
    let Some((amqp, api)) = rabbitmq() else {
        return;
    };
    for _ in 0..240 {
        if nameko::testing::TestBroker::rabbitmq(&amqp, &api).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("the RabbitMQ management API did not come back");
}

/// Waits until `service` answers (its queue exists and a consumer replies).
pub async fn wait_for_service(
    client: &nameko::ClusterRpcClient,
    service: &str,
    method: &str,
    args: serde_json::Value,
) {
    let proxy = client
        .service(service.to_owned())
        .with_timeout(std::time::Duration::from_secs(5));
    for _ in 0..120 {
        match proxy.call::<_, serde_json::Value>(method, &args).await {
            Err(nameko::RpcError::UnknownService(_)) | Err(nameko::RpcError::Timeout(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            _ => return,
        }
    }
    panic!("{service} did not come up");
}

/// A file removed on drop.
pub mod tempfile_path {
    pub struct TempPath(std::path::PathBuf);

    impl TempPath {
        pub fn new(extension: &str, contents: &str) -> TempPath {
            let path = std::env::temp_dir()
                .join(format!("nameko-test-{}.{extension}", uuid::Uuid::new_v4()));
            std::fs::write(&path, contents).expect("write a temporary file");
            TempPath(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The build's target directory (`target/<profile>`), where `cargo test` puts the binaries and
/// examples next to the tests.
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// The path of a built example.
pub fn example(name: &str) -> std::path::PathBuf {
    target_dir().join("examples").join(name)
}

/// A running child process (an example, a service binary): killed on drop.
pub struct Running(pub std::process::Child);

impl Running {
    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        self.0.wait().expect("wait for the process")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child's log lines, read on a thread of their own so that the pipe stays open (and drained)
/// for as long as the child runs; each line is waited for up to 10 s.
pub fn log_lines(stderr: std::process::ChildStderr) -> impl Iterator<Item = String> {
    log_lines_of(stderr)
}

/// The lines a child writes on `pipe` (see [`log_lines`]).
pub fn log_lines_of(pipe: impl std::io::Read + Send + 'static) -> impl Iterator<Item = String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::iter::from_fn(move || rx.recv_timeout(std::time::Duration::from_secs(10)).ok())
}

/// Runs `rabbitmqctl` on the broker `tests/run.sh` manages (`NAMEKO_TEST_RABBITMQCTL`).
pub fn rabbitmqctl(args: &[&str]) {
    let ctl = std::env::var("NAMEKO_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let output = std::process::Command::new(&ctl)
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Closes every connection of a RabbitMQ test broker's virtual host from the broker's side, at
/// once (the management API lists a new connection only after its next statistics round).
pub fn close_all_connections(broker: &TestBroker) {
    let vhost = broker
        .inner()
        .vhost()
        .expect("a RabbitMQ broker")
        .to_owned();
    rabbitmqctl(&["close_all_connections", "-p", &vhost, "closed by the test"]);
}

/// The test cluster of `tests/cluster.sh` with a virtual host of the test's own: without it,
/// skip (`None`), unless CI=true or NAMEKO_TEST_REQUIRE_BROKER=1 forbids skipping (a panic).
pub fn cluster_for_test() -> Option<cluster::Cluster> {
    match cluster::Cluster::from_env() {
        Some(cluster) => Some(cluster),
        None if broker_required() => panic!(
            "the test cluster is not configured (NAMEKO_TEST_CLUSTER_AMQP, NAMEKO_TEST_CLUSTER_API, NAMEKO_TEST_CLUSTER_CTL), and CI=true / NAMEKO_TEST_REQUIRE_BROKER=1 forbids skipping: run tests/run.sh"
        ),
        None => {
            eprintln!("SKIPPED: the test cluster is not configured (run tests/run.sh)");
            None
        }
    }
}

/// A plain HTTP/1.1 GET over a real socket, with `headers`: the status and the body.
pub fn http_get(
    address: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
