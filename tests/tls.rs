//! `amqps://` with Nameko's `AMQP_SSL`: a certificate authority, a client certificate and key,
//! against RabbitMQ's TLS listener set up by `tests/run.sh` (which makes the authority and the
//! certificates, and sets `NAMEKO_TEST_TLS_DIR` and `NAMEKO_TEST_AMQPS_PORT`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestBroker;
use nameko::prelude::*;
use nameko::transport::{self, TlsOptions, TransportError};
use nameko::{ClusterRpcClient, Config, ServiceRunner};

#[derive(Dependencies)]
pub struct Secure;

#[service(name = "secure_service")]
impl Secure {
    #[rpc]
    async fn whisper(&self, text: String) -> String {
        text.to_lowercase()
    }
}

/// The test broker's virtual host on the TLS listener, and the test certificates' directory.
fn tls_broker() -> Option<(TestBroker, String, PathBuf)> {
    let Some(dir) = std::env::var_os("NAMEKO_TEST_TLS_DIR") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "NAMEKO_TEST_TLS_DIR is not set, and CI=true forbids skipping: run tests/run.sh"
            );
        }
        eprintln!("SKIPPED: no RabbitMQ TLS listener configured (run tests/run.sh)");
        return None;
    };
    let port = std::env::var("NAMEKO_TEST_AMQPS_PORT").unwrap_or_else(|_| "5671".into());
    let broker = TestBroker::amqp()?;
    // amqp://user:pass@host:5672/vhost → amqps://user:pass@host:5671/vhost
    let (authority, vhost) = broker
        .uri
        .strip_prefix("amqp://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an amqp:// URI with a virtual host");
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let uri = format!("amqps://{host}:{port}/{vhost}");
    Some((broker, uri, PathBuf::from(dir)))
}

fn client_tls(dir: &std::path::Path) -> TlsOptions {
    TlsOptions::new()
        .with_ca_certs(dir.join("ca.pem"))
        .with_client_certificate(dir.join("client.pem"), dir.join("client.key"))
}

#[tokio::test(flavor = "multi_thread")]
async fn services_and_clients_talk_over_tls_with_a_client_certificate() {
    let Some((_broker, uri, dir)) = tls_broker() else {
        return;
    };
    // As a configuration file says it.
    let file = common::tempfile_path::TempPath::new(
        "yaml",
        &format!(
            "AMQP_URI: {uri}\nAMQP_SSL:\n  ca_certs: {ca}\n  certfile: {cert}\n  keyfile: {key}\n  cert_reqs: 2\n",
            ca = dir.join("ca.pem").display(),
            cert = dir.join("client.pem").display(),
            key = dir.join("client.key").display(),
        ),
    );
    let config = Config::from_file(file.path()).expect("the configuration reads");
    assert_eq!(config.amqp_ssl, Some(client_tls(&dir)));
    let running = ServiceRunner::new(config.clone())
        .with_service::<Secure>()
        .start()
        .await
        .expect("the service starts over TLS");
    let client = ClusterRpcClient::connect_with(&config)
        .await
        .expect("the client connects over TLS");
    let answer: String = client
        .service("secure_service")
        .call("whisper", ("PSST",))
        .await
        .unwrap();
    assert_eq!(answer, "psst");
    running.stop().await.unwrap();
}

/// The error of a connection that should not be made, within 10 s.
async fn refused(uri: &str, tls: &TlsOptions) -> String {
    match tokio::time::timeout(
        Duration::from_secs(10),
        transport::connect_with_tls(uri, tls),
    )
    .await
    {
        Ok(Ok(_)) => panic!("connected to {uri} with {tls:?}"),
        Ok(Err(TransportError::Connection(e))) => e,
        Ok(Err(other)) => panic!("not a connection error: {other:?}"),
        Err(_) => panic!("no answer in 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_certificate_from_an_unknown_authority_is_refused() {
    let Some((_broker, uri, dir)) = tls_broker() else {
        return;
    };
    // The system's authorities do not know the test authority.
    let error = refused(
        &uri,
        &TlsOptions::new().with_client_certificate(dir.join("client.pem"), dir.join("client.key")),
    )
    .await;
    assert!(error.contains("cannot connect to amqps://"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_asks_for_a_client_certificate_refuses_a_client_without_one() {
    let Some((_broker, uri, dir)) = tls_broker() else {
        return;
    };
    let error = refused(&uri, &TlsOptions::new().with_ca_certs(dir.join("ca.pem"))).await;
    assert!(error.contains("cannot connect to amqps://"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_or_mismatched_tls_files_are_clear_errors() {
    let Some((_broker, uri, dir)) = tls_broker() else {
        return;
    };
    let error = refused(
        &uri,
        &TlsOptions::new().with_ca_certs(dir.join("missing.pem")),
    )
    .await;
    assert!(error.contains("cannot read AMQP_SSL ca_certs"), "{error}");
    assert!(error.contains("missing.pem"), "{error}");
    // A key that is not the certificate's.
    let error = refused(
        &uri,
        &TlsOptions::new()
            .with_ca_certs(dir.join("ca.pem"))
            .with_client_certificate(dir.join("client.pem"), dir.join("server.key")),
    )
    .await;
    assert!(error.contains("cannot connect to amqps://"), "{error}");
}
