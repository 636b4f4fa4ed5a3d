//! The examples, run as a user runs them: as binaries.

mod common;

use std::process::{Command, Stdio};

use common::{
    Running, TestBroker, example, log_lines, log_lines_of, python, python_calls, wait_for_service,
};
use serde_json::json;

#[test]
fn the_demo_runs_the_talk_on_the_embedded_broker() {
    let output = Command::new(example("demo"))
        .env_remove("AMQP_URI")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Services running on memory://"), "{stdout}");
    assert!(
        stdout.contains(r#"-> HTTP/1.1 200 OK {"value":84}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /multiply/6/x            -> HTTP/1.1 404 Not Found"),
        "{stdout}"
    );
    assert!(stdout.contains("\nHello Tim!\n"), "{stdout}");
    assert!(
        stdout.contains("\nHello Tim the Enchanter! Welcome to Pygotham!\n"),
        "{stdout}"
    );
    assert!(stdout.contains("-> MethodNotFound: shout"), "{stdout}");
    assert!(
        stdout.contains(
            "-> IncorrectSignature: greet() takes 2 positional arguments but 3 were given"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("-> Unknown service `holy_grail`"),
        "{stdout}"
    );
    assert!(stdout.contains("-> Hello Lancelot!"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| ["SPAM", "EGG", "BACON", "SPAMMY SPAM"].contains(&l)),
        "the timer printed a word: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("my_event_handler_service_1 received: hi"),
        "{stderr}"
    );
    assert!(
        stderr.contains("my_event_handler_service_2 received: hi"),
        "{stderr}"
    );
}

#[test]
fn a_service_binary_lists_its_services() {
    let output = Command::new(example("greeter"))
        .arg("list")
        .output()
        .expect("run greeter list");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "expanded_greeter_service\n  rpc greet(name: String) -> String\ngreeter_service\n  rpc greet(name: String) -> String\n"
    );
    let output = Command::new(example("events"))
        .arg("list")
        .output()
        .expect("run events list");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "my_event_handler_service_1\n  event handle_event <- my_event_publisher_service.my_event (service_pool)\n\
         my_event_handler_service_2\n  event handle_event <- my_event_publisher_service.my_event (service_pool)\n\
         my_event_publisher_service\n  rpc publish(payload: String) -> ()\n"
    );
}

#[test]
fn without_a_broker_the_greeter_runs_embedded_says_so_and_stops_on_sigterm() {
    let child = Command::new(example("greeter"))
        .arg("run")
        .env_remove("AMQP_URI")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the greeter");
    let mut running = Running(child);
    let mut lines = log_lines(running.0.stderr.take().expect("stderr"));
    let first = lines.next().expect("a first log line");
    assert!(
        first.contains("running on the embedded broker (memory://)"),
        "{first}"
    );
    assert!(
        first.contains("--broker amqp://guest:guest@localhost"),
        "{first}"
    );
    // Wait until both services started, then stop with SIGTERM.
    let mut started = 0;
    for line in lines.by_ref() {
        if line.contains("service started") {
            started += 1;
            if started == 2 {
                break;
            }
        }
    }
    assert_eq!(started, 2);
    let status = running.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_greeter_on_rabbitmq_answers_python_and_the_client_example() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let greeter = Running(
        Command::new(example("greeter"))
            .args(["run", "--broker", &broker.uri])
            .stderr(Stdio::null())
            .spawn()
            .expect("start the greeter"),
    );
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(
        &client,
        "expanded_greeter_service",
        "greet",
        json!(["ready?"]),
    )
    .await;

    let out = python_calls(
        &python,
        &broker,
        &json!([{"service": "expanded_greeter_service", "method": "greet", "args": ["Tim the Enchanter"]}]),
    )
    .await;
    assert_eq!(
        out,
        [json!({"result": "Hello Tim the Enchanter! Welcome to Pygotham!"})]
    );

    let output = tokio::process::Command::new(example("client"))
        .args(["--broker", &broker.uri])
        .output()
        .await
        .expect("run the client example");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "Hello Tim the Enchanter! Welcome to Pygotham!\n"
    );

    drop(client);
    let status = greeter.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_example_on_rabbitmq_reaches_both_handlers_from_python() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let mut child = Command::new(example("events"))
        .args(["run", "--broker", &broker.uri])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the events example");
    let mut lines = log_lines(child.stderr.take().expect("stderr"));
    let running = Running(child);
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(
        &client,
        "my_event_publisher_service",
        "publish",
        json!(["warm-up"]),
    )
    .await;
    let out = python_calls(
        &python,
        &broker,
        &json!([{"service": "my_event_publisher_service", "method": "publish", "args": ["hi"]}]),
    )
    .await;
    assert_eq!(out, [json!({"result": null})]);
    let received: Vec<String> = lines
        .by_ref()
        .filter(|line| line.contains("received: hi"))
        .take(2)
        .collect();
    assert!(
        received
            .iter()
            .any(|l| l.contains("my_event_handler_service_1 received: hi")),
        "{received:?}"
    );
    assert!(
        received
            .iter()
            .any(|l| l.contains("my_event_handler_service_2 received: hi")),
        "{received:?}"
    );
    // A line logged in a worker says which worker.
    assert!(
        received
            .iter()
            .all(|l| l.contains("worker{service=\"my_event_handler_service_")
                && l.contains("entrypoint=\"handle_event\" call_id=\"my_event_handler_service_")),
        "{received:?}"
    );
    drop(client);
    assert!(running.terminate().success());
}

/// `method path` against `address`: the status line's code and the body.
fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    try_request(address, method, path).expect("an HTTP response")
}

/// A loopback address with a port nothing listens on, for an example's HTTP server.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn the_multiply_example_answers_curl_as_in_the_talk() {
    let address = free_address();
    let mut child = Command::new(example("multiply"))
        .args(["run", "--web-server-address", &address])
        .env_remove("AMQP_URI")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the multiply example");
    let mut lines = log_lines(child.stderr.take().expect("stderr"));
    let running = Running(child);
    let listening = lines
        .find(|line| line.contains("HTTP server listening"))
        .expect("the server says it listens");
    assert!(listening.contains(&address), "{listening}");
    assert_eq!(
        http(&address, "GET", "/multiply/6/7?third=2"),
        (200, r#"{"value":84}"#.to_owned())
    );
    assert_eq!(http(&address, "GET", "/multiply/6/x").0, 404);
    assert_eq!(http(&address, "POST", "/multiply/6/7").0, 405);
    assert!(running.terminate().success());
}

#[test]
fn the_ping_example_prints_a_word_each_second() {
    let mut child = Command::new(example("ping"))
        .arg("run")
        .env_remove("AMQP_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the ping example");
    let mut words = log_lines_of(child.stdout.take().expect("stdout"));
    let running = Running(child);
    let first_two: Vec<String> = words.by_ref().take(2).collect();
    assert_eq!(first_two.len(), 2, "two words within 10 s each");
    for word in &first_two {
        assert!(
            ["SPAM", "EGG", "BACON", "SPAMMY SPAM"].contains(&word.as_str()),
            "{word}"
        );
    }
    assert!(running.terminate().success());
}

#[test]
fn the_cron_example_reports_on_its_schedule() {
    let mut child = Command::new(example("cron"))
        .arg("run")
        .env_remove("AMQP_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cron example");
    let mut lines = log_lines_of(child.stdout.take().expect("stdout"));
    let running = Running(child);
    let first_two: Vec<String> = lines.by_ref().take(2).collect();
    assert_eq!(first_two.len(), 2, "two reports within 10 s each");
    // Every two seconds, on even seconds.
    let seconds: Vec<u32> = first_two
        .iter()
        .map(|line| {
            let due = line.rsplit("due at ").next().expect("a due time");
            due[17..19].parse().expect("seconds")
        })
        .collect();
    assert!(
        first_two[0].starts_with("report 1, due at "),
        "{first_two:?}"
    );
    assert!(
        first_two[1].starts_with("report 2, due at "),
        "{first_two:?}"
    );
    assert!(seconds.iter().all(|s| s % 2 == 0), "{first_two:?}");
    assert_eq!((seconds[0] + 2) % 60, seconds[1], "{first_two:?}");
    assert!(running.terminate().success());
}

#[test]
fn a_nameko_style_config_file_drives_show_config_and_run() {
    let dir = std::env::temp_dir().join(format!("nameko-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "AMQP_URI: ${NAMEKO_EXAMPLE_BROKER:amqp://guest:guest@localhost}\nmax_workers: ${NAMEKO_EXAMPLE_WORKERS:4}\nGREETING: hello\n",
    )
    .unwrap();

    let shown = Command::new(example("greeter"))
        .args(["--config"])
        .arg(&config)
        .args(["--define", "max_workers=6", "show-config"])
        .env_remove("NAMEKO_EXAMPLE_BROKER")
        .output()
        .expect("show-config");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("AMQP_URI: amqp://guest:********@localhost\n"),
        "{shown}"
    );
    assert!(shown.contains("max_workers: 6\n"), "{shown}");
    assert!(shown.contains("GREETING: hello\n"), "{shown}");

    let mut child = Command::new(example("greeter"))
        .args(["--config"])
        .arg(&config)
        .arg("run")
        .env("NAMEKO_EXAMPLE_BROKER", "memory://")
        .stderr(Stdio::piped())
        .spawn()
        .expect("run with the config");
    let mut lines = log_lines(child.stderr.take().expect("stderr"));
    let running = Running(child);
    let first = lines.next().expect("a log line");
    assert!(first.contains("running on the embedded broker"), "{first}");
    assert!(lines.any(|l| l.contains("service started")));
    assert!(running.terminate().success());

    std::fs::write(&config, "max_workers: lots\n").unwrap();
    let bad = Command::new(example("greeter"))
        .arg("--config")
        .arg(&config)
        .arg("show-config")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("`max_workers` must be a positive whole number"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_database_example_opens_its_pool_at_start_and_closes_it_at_stop() {
    let dir = std::env::temp_dir().join(format!("nameko-db-example-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("todo.sqlite");
    let mut child = Command::new(example("database"))
        .args(["--define", &format!("DATABASE_PATH={}", path.display())])
        .arg("run")
        .env_remove("AMQP_URI")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the database example");
    let mut lines = log_lines(child.stderr.take().expect("stderr"));
    let running = Running(child);
    let opened: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.contains("service started"))
        .collect();
    assert!(
        opened.iter().any(|l| l.contains("database pool open")),
        "{opened:#?}"
    );
    assert!(path.exists(), "the database file was created");
    assert!(running.terminate().success());
    let rest: Vec<String> = lines.collect();
    assert!(
        rest.iter().any(|l| l.contains("database pool closed")),
        "{rest:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_reconnects_when_the_broker_drops_its_connection() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let mut child = Command::new(example("greeter"))
        .args(["run", "--broker", &broker.uri])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the greeter");
    let lines = log_lines(child.stderr.take().expect("stderr"));
    let running = Running(child);
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(&client, "greeter_service", "greet", json!(["warm-up"])).await;
    drop(client);

    // The broker drops the connections of the virtual host, the service's included: the
    // management API lists a connection a few seconds after it opens, so until two are closed
    // (the client's, closing, may be one; the service losing either of its own reconnects).
    let mut closed = 0;
    for _ in 0..80 {
        closed += broker.inner().close_connections().unwrap();
        if closed >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(closed >= 2, "no connection of the service to close");

    // The service comes back on a new connection and answers.
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(&client, "greeter_service", "greet", json!(["again"])).await;
    let greeting: String = client
        .service("greeter_service")
        .call("greet", ["Tim"])
        .await
        .unwrap();
    assert_eq!(greeting, "Hello Tim!");
    let log: Vec<String> = lines
        .take_while(|l| !l.contains("services running again"))
        .collect();
    assert!(
        log.iter()
            .any(|l| l.contains("lost the connection to the broker; reconnecting")),
        "{log:#?}"
    );
    // The broker's URI appears in the log with its password masked, never in clear.
    let password = broker
        .uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .map(|(_, password)| format!(":{password}@"))
        .expect("a URI with a password");
    assert!(log.iter().any(|l| l.contains(":********@")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains(&password)), "{log:#?}");
    drop(client);
    assert!(running.terminate().success());
}

/// One request on a connection of its own: the status and body, or `None` while nothing
/// listens (or answers within 5 s).
fn try_request(address: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A GET (see [`try_request`]).
fn try_get(address: &str, path: &str) -> Option<(u16, String)> {
    try_request(address, "GET", path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_answers_through_the_greeters_and_again_after_the_broker_closes_every_connection()
 {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let address = free_address();
    let greeters = Running(
        Command::new(example("greeter"))
            .args(["run", "--broker", &broker.uri])
            .stderr(Stdio::null())
            .spawn()
            .expect("start the greeter"),
    );
    let mut gateway = Command::new(example("gateway"))
        .args([
            "run",
            "--broker",
            &broker.uri,
            "--web-server-address",
            &address,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let lines = log_lines(gateway.stderr.take().expect("stderr"));
    let gateway = Running(gateway);
    let expected = (
        200,
        r#"{"greeting":"Hello Tim! Welcome to Pygotham!"}"#.to_owned(),
    );
    let answers_within = |within: std::time::Duration| {
        let deadline = std::time::Instant::now() + within;
        let mut last = None;
        while std::time::Instant::now() < deadline {
            last = try_get(&address, "/greet/Tim");
            if last.as_ref() == Some(&expected) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(last)
    };
    answers_within(std::time::Duration::from_secs(30)).expect("the gateway answers at first");
    assert_eq!(
        try_get(&address, "/multiply/6/7"),
        Some((200, r#"{"value":42}"#.to_owned()))
    );

    common::close_all_connections(&broker);
    let closed = std::time::Instant::now();
    answers_within(std::time::Duration::from_secs(10))
        .expect("the gateway answers 200 again within 10 s of the broker closing its connections");
    let recovered = closed.elapsed();
    for _ in 0..20 {
        assert_eq!(try_get(&address, "/greet/Tim"), Some(expected.clone()));
    }
    let log: Vec<String> = lines
        .take_while(|l| !l.contains("services running again"))
        .collect();
    assert!(
        log.iter().any(|l| l.contains("lost the broker connection")),
        "{log:#?}"
    );
    eprintln!("the gateway answered again {recovered:?} after the close");
    assert!(gateway.terminate().success());
    assert!(greeters.terminate().success());
}
