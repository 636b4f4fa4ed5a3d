//! The standalone `nameko` binary against running services, Rust and Python, on RabbitMQ.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{
    PythonServices, Running, TestBroker, example, log_lines, python, target_dir, wait_for_service,
};
use serde_json::{Value, json};

/// Runs `nameko` with these arguments (and `stdin`, if given).
fn nameko(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(target_dir().join("nameko"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nameko");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("nameko finishes")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An example binary running on `broker`, and its log.
fn start_example(name: &str, broker: &TestBroker) -> (Running, impl Iterator<Item = String>) {
    start_example_with(name, broker, &[])
}

/// Like [`start_example`], with more arguments for `run`.
fn start_example_with(
    name: &str,
    broker: &TestBroker,
    args: &[&str],
) -> (Running, impl Iterator<Item = String>) {
    let mut child = Command::new(example(name))
        .args([
            "run",
            "--broker",
            &broker.uri,
            "--web-server-address",
            "127.0.0.1:0",
        ])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let lines = log_lines(child.stderr.take().expect("stderr"));
    (Running(child), lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn call_and_shell_reach_a_rust_service() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let (_greeter, _log) = start_example("greeter", &broker);
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(&client, "greeter_service", "greet", json!(["ready?"])).await;
    let uri = broker.uri.as_str();

    let out = nameko(
        &[
            "call",
            "greeter_service.greet",
            r#"["Tim"]"#,
            "--broker",
            uri,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"Hello Tim!\"\n");

    let out = nameko(
        &[
            "call",
            "greeter_service.greet",
            "--kwargs",
            r#"{"name": "Tim"}"#,
            "--broker",
            uri,
        ],
        None,
    );
    assert_eq!(stdout(&out), "\"Hello Tim!\"\n");

    let out = nameko(
        &[
            "call",
            "greeter_service.shout",
            r#"["Tim"]"#,
            "--broker",
            uri,
        ],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "error: MethodNotFound: shout\n");

    let out = nameko(
        &["call", "nowhere.greet", "--broker", uri, "--timeout", "5"],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "error: Unknown service `nowhere`\n");

    let out = nameko(
        &["shell", "--broker", uri],
        Some("greeter_service.greet(name=\"Tim\")\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"Hello Tim!\"\n");

    let script = "greeter_service.greet(\"Tim\")\ngreeter_service.greet(1, 2)\ngreeter_service.greet(\"never\")\n";
    let out = nameko(&["shell", "--broker", uri], Some(script));
    assert!(
        !out.status.success(),
        "piped input stops at the first error"
    );
    assert_eq!(stdout(&out), "\"Hello Tim!\"\n");
    assert!(
        stderr(&out).starts_with("error: IncorrectSignature: greet() takes 2 positional arguments"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dispatch_reaches_event_handlers() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let (_events, mut log) = start_example("events", &broker);
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
    let out = nameko(
        &[
            "dispatch",
            "my_event_publisher_service",
            "my_event",
            r#""from the command line""#,
            "--broker",
            &broker.uri,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let received = log
        .by_ref()
        .filter(|line| line.contains("received: from the command line"))
        .take(2)
        .count();
    assert_eq!(received, 2, "both handler services log the event");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_name_the_worker_and_the_trace() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let (_events, log) = start_example_with("events", &broker, &["--define", "LOG_FORMAT=json"]);
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
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let () = client
        .with_context_data([("traceparent".to_owned(), json!(traceparent))].into())
        .service("my_event_publisher_service")
        .call("publish", json!(["traced"]))
        .await
        .unwrap();
    let line = log
        .map(|line| {
            serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {line}"))
        })
        .find(|line| line["message"] == "my_event_handler_service_1 received: traced")
        .expect("the handler's line in the log");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "events");
    assert_eq!(line["service"], "my_event_handler_service_1");
    assert_eq!(line["entrypoint"], "handle_event");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let call_id = line["call_id"].as_str().unwrap();
    assert!(
        call_id.starts_with("my_event_handler_service_1.handle_event."),
        "{call_id}"
    );
    let stack: Vec<&str> = line["call_id_stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let callers = [
        "standalone_rpc_proxy.call.",
        "my_event_publisher_service.publish.",
    ];
    assert_eq!(
        stack.len(),
        3,
        "the client's call, the publisher's, the handler's: {stack:?}"
    );
    for (id, caller) in stack.iter().zip(callers) {
        assert!(id.starts_with(caller), "{stack:?}");
    }
    assert_eq!(stack[2], call_id);
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_reaches_a_python_service_the_same_way() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let _python = PythonServices::start(&python, &broker, &["PythonService"]);
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(&client, "python_service", "echo", json!([1])).await;
    let out = nameko(
        &[
            "call",
            "python_service.add",
            "[40, 2]",
            "--broker",
            &broker.uri,
        ],
        None,
    );
    assert_eq!(stdout(&out), "42\n", "{}", stderr(&out));
    let out = nameko(
        &["shell", "--broker", &broker.uri],
        Some("python_service.raise_value_error('boom')\n"),
    );
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "error: ValueError: boom\n");
}

#[test]
fn show_config_prints_the_file_with_passwords_masked() {
    let path = std::env::temp_dir().join(format!("nameko-cli-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, "AMQP_URI: ${NAMEKO_CLI_TEST_URI:amqp://user:secret@rabbit:5672/vh}\nrpc_exchange: my-rpc\n").unwrap();
    let out = nameko(&["show-config", "--config", path.to_str().unwrap()], None);
    let _ = std::fs::remove_file(&path);
    let shown = stdout(&out);
    assert!(
        shown.contains("AMQP_URI: amqp://user:********@rabbit:5672/vh\n"),
        "{shown}"
    );
    assert!(shown.contains("rpc_exchange: my-rpc\n"), "{shown}");
    assert!(!shown.contains("secret"));
}

/// `nameko services` on the three-node cluster of `tests/cluster.sh`: the greeter example
/// twice, connected to c1 and to c2, and Python nameko's `python_service` on c3; asked of any
/// node, the command lists all three services with their instances across the cluster.
#[tokio::test(flavor = "multi_thread")]
async fn services_lists_the_services_of_a_cluster_from_any_node() {
    let Some(cluster) = common::cluster_for_test() else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let greeter = |node: usize| {
        Running(
            Command::new(example("greeter"))
                .args(["run", "--broker", &cluster.uri_from(node)])
                .stderr(Stdio::null())
                .spawn()
                .expect("start the greeter example"),
        )
    };
    let (_greeter_on_c1, _greeter_on_c2) = (greeter(0), greeter(1));
    let _python = PythonServices::start_on(&python, &cluster.amqp[2], &["PythonService"], "");
    for (queue, instances) in [
        ("rpc-greeter_service", 2),
        ("rpc-expanded_greeter_service", 2),
        ("rpc-python_service", 1),
    ] {
        cluster.wait_for_consumers(queue, instances).await;
    }
    let version = env!("CARGO_PKG_VERSION");
    let expected = format!(
        "expanded_greeter_service  2 instances  nameko-rs {version}: greet\n\
         greeter_service           2 instances  nameko-rs {version}: greet\n\
         python_service            1 instance   does not describe itself (Python nameko)\n"
    );
    for node in 0..3 {
        let out = nameko(
            &[
                "services",
                "--broker",
                &cluster.amqp[node],
                "--management",
                &cluster.api[node],
            ],
            None,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), expected, "asked of node {}", node + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_lists_python_and_rust_services_with_their_instances() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let Some((_, management)) = common::rabbitmq() else {
        return;
    };
    let (_greeter_1, _log_1) = start_example("greeter", &broker);
    let (_greeter_2, _log_2) = start_example("greeter", &broker);
    let (_events, _log_3) = start_example("events", &broker);
    let _python = PythonServices::start(&python, &broker, &["PythonService"]);
    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    wait_for_service(&client, "python_service", "echo", json!([1])).await;
    wait_for_service(&client, "greeter_service", "greet", json!(["ready?"])).await;
    wait_for_service(
        &client,
        "my_event_publisher_service",
        "publish",
        json!(["warm-up"]),
    )
    .await;
    for queue in ["rpc-greeter_service", "rpc-expanded_greeter_service"] {
        for _ in 0..100 {
            if broker.inner().consumers(queue).unwrap() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let uri = broker.uri.as_str();

    let out = nameko(
        &["services", "--broker", uri, "--management", &management],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stdout(&out),
        format!(
            "expanded_greeter_service    2 instances  nameko-rs {version}: greet\n\
             greeter_service             2 instances  nameko-rs {version}: greet\n\
             my_event_handler_service_1  1 instance   event handlers only\n\
             my_event_handler_service_2  1 instance   event handlers only\n\
             my_event_publisher_service  1 instance   nameko-rs {version}: publish\n\
             python_service              1 instance   does not describe itself (Python nameko)\n"
        )
    );

    let out = nameko(
        &[
            "describe",
            "greeter_service",
            "--broker",
            uri,
            "--management",
            &management,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "greeter_service: 2 instances, nameko-rs {version}\n  rpc greet(name: String) -> String\n"
        )
    );

    let out = nameko(
        &[
            "describe",
            "my_event_publisher_service",
            "--json",
            "--broker",
            uri,
            "--management",
            &management,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let described: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(described["instances"], 1);
    assert_eq!(
        described["description"]["rpc"],
        json!([{"name": "publish", "params": ["payload"], "signature": "(payload: String) -> ()"}])
    );
    assert_eq!(
        described["description"]["events_dispatched"],
        json!(["my_event"]),
        "the warm-up call dispatched one"
    );

    let out = nameko(
        &[
            "describe",
            "python_service",
            "--broker",
            uri,
            "--management",
            &management,
        ],
        None,
    );
    assert_eq!(
        stdout(&out),
        "python_service: 1 instance, does not describe itself (Python nameko)\n"
    );
    let out = nameko(
        &[
            "describe",
            "nowhere",
            "--broker",
            uri,
            "--management",
            &management,
        ],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "error: no service `nowhere` runs on the broker (`nameko services` lists them)\n"
    );
}
