//! Several broker addresses in `AMQP_URI` (a cluster's nodes): the first that answers is
//! used, and the next connection goes to the next one (round robin). On one RabbitMQ here, with
//! addresses that do not answer standing in for lost nodes; `tests/cluster.rs` is for a real
//! cluster.

mod common;

use common::TestBroker;
use nameko::prelude::*;

#[derive(Dependencies)]
struct Echo;

#[service(name = "echo")]
impl Echo {
    #[rpc]
    fn echo(&self, value: String) -> String {
        value
    }
}

/// A port nothing listens on.
fn dead_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("amqp://guest:guest@127.0.0.1:{port}")
}

#[tokio::test]
async fn a_service_and_a_client_connect_to_the_broker_that_answers() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    // The live broker last, after two that do not answer.
    let uris = format!("{};{};{}", dead_address(), dead_address(), broker.uri);
    let services = ServiceRunner::new(Config::default().with_broker(&uris))
        .with_service::<Echo>()
        .start()
        .await
        .expect("the service starts on the broker that answers");
    let client = ClusterRpcClient::connect(&uris).await.unwrap();
    let echoed: String = client.service("echo").call("echo", ["hi"]).await.unwrap();
    assert_eq!(echoed, "hi");
    services.stop().await.unwrap();
}

#[tokio::test]
async fn when_no_broker_answers_the_error_names_each() {
    let uris = format!("{};{}", dead_address(), dead_address());
    let error = nameko::transport::connect(&uris)
        .await
        .err()
        .expect("no broker answers");
    let message = error.to_string();
    assert!(message.contains("no broker answered"), "{message}");
    assert_eq!(
        message.matches("guest:********@127.0.0.1").count(),
        2,
        "{message}"
    );
    assert!(
        !message.contains("guest:guest"),
        "the password is masked: {message}"
    );
}

#[tokio::test]
async fn connections_go_round_the_list() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    // The same live broker twice (as two nodes would be): each connection starts after the one
    // the list connected to last, so both are used in turn.
    let second = broker.uri.replace("127.0.0.1", "localhost");
    let uris = format!("{};{second}", broker.uri);
    let mut described = Vec::new();
    for _ in 0..3 {
        let transport = nameko::transport::connect(&uris).await.unwrap();
        described.push(transport.describe());
        transport.close().await;
    }
    assert!(described[0].contains("127.0.0.1"), "{described:?}");
    assert!(described[1].contains("localhost"), "{described:?}");
    assert!(described[2].contains("127.0.0.1"), "{described:?}");
}

#[test]
fn a_list_of_brokers_in_the_config_file_is_the_same_as_semicolons() {
    let mut config = Config::default();
    config
        .define("AMQP_URI", "[amqp://a:x@h1:5672, amqp://b:y@h2:5672]")
        .unwrap();
    assert_eq!(
        config.amqp_uri.as_deref(),
        Some("amqp://a:x@h1:5672;amqp://b:y@h2:5672")
    );
    let shown = format!("{config:?}");
    assert!(
        shown.contains("amqp://a:********@h1:5672;amqp://b:********@h2:5672"),
        "{shown}"
    );
}
