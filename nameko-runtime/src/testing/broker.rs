//! Brokers for tests: an embedded one of their own, or a RabbitMQ virtual host of their own
//! (made and deleted through the management API).

use serde_json::Value;

use crate::error::Error;
use crate::management::{ManagementApi, percent_encode};
use crate::transport::{self, SharedTransport, TransportError};

/// A broker for one test: an embedded broker of its own, or a RabbitMQ virtual host of its own
/// (created through the management API, deleted when dropped), so tests never see each other's
/// queues.
#[derive(Debug)]
pub struct TestBroker {
    uri: String,
    vhost: Option<(ManagementApi, String)>,
}

impl TestBroker {
    /// A new embedded broker, in this process only.
    pub fn embedded() -> TestBroker {
        TestBroker {
            uri: format!("memory://test-{}", uuid::Uuid::new_v4().simple()),
            vhost: None,
        }
    }

    /// A new virtual host `nameko_test_<random>` on the RabbitMQ at `amqp_uri`
    /// (`amqp://guest:guest@localhost:5672`), made through its management API at
    /// `management_uri` (`http://guest:guest@localhost:15672`); deleted when dropped. The
    /// users of both URIs get every permission on it.
    ///
    /// It speaks to the management API with blocking I/O (a few short requests, here and when
    /// dropped): fine in a test, even an async one.
    pub fn rabbitmq(amqp_uri: &str, management_uri: &str) -> Result<TestBroker, Error> {
        let api = ManagementApi::parse(management_uri)?;
        let amqp_user = transport::amqp_user(amqp_uri).map_err(|e| {
            Error::Config(format!(
                "invalid AMQP URI `{}`: {e}",
                transport::mask_password(amqp_uri)
            ))
        })?;
        let suffix: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(10)
            .collect();
        let vhost = format!("nameko_test_{suffix}");
        api.request("PUT", &format!("/api/vhosts/{vhost}"), "")?;
        let broker = TestBroker {
            uri: format!("{}/{vhost}", amqp_uri.trim_end_matches('/')),
            vhost: Some((api.clone(), vhost.clone())),
        };
        let mut users = vec![api.user.as_str()];
        if amqp_user != api.user {
            users.push(&amqp_user);
        }
        for user in users {
            // On failure, `broker` is dropped: the virtual host goes again.
            api.request(
                "PUT",
                &format!("/api/permissions/{vhost}/{}", percent_encode(user)),
                r#"{"configure":".*","write":".*","read":".*"}"#,
            )?;
        }
        Ok(broker)
    }

    /// The broker the environment names, for tests that run on either: a virtual host of its
    /// own on the RabbitMQ at `NAMEKO_TEST_AMQP_URI` (management API at
    /// `NAMEKO_TEST_RABBIT_API`, by default `http://guest:guest@localhost:15672`), or an
    /// embedded broker when `NAMEKO_TEST_AMQP_URI` is not set.
    pub fn from_env() -> Result<TestBroker, Error> {
        match std::env::var("NAMEKO_TEST_AMQP_URI") {
            Ok(amqp) => {
                let api = std::env::var("NAMEKO_TEST_RABBIT_API")
                    .unwrap_or_else(|_| "http://guest:guest@localhost:15672".to_owned());
                TestBroker::rabbitmq(&amqp, &api)
            }
            Err(_) => Ok(TestBroker::embedded()),
        }
    }

    /// The broker's URI (`memory://…` or `amqp://…/<vhost>`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The virtual host made for this test, if it is on RabbitMQ.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_ref().map(|(_, vhost)| vhost.as_str())
    }

    /// A new connection to this broker.
    pub async fn connect(&self) -> Result<SharedTransport, TransportError> {
        transport::connect(&self.uri).await
    }

    /// Closes the client connections to this test's virtual host that RabbitMQ's management API
    /// lists, from the broker's side, as a broker restart or a network failure would; returns
    /// how many it closed. Only for a RabbitMQ test broker.
    ///
    /// The API lists a new connection only after its next statistics round, a few seconds
    /// after it opens: until then it is not closed. Call again while it returns fewer than you
    /// expect; to close every connection at once, however new, run
    /// `rabbitmqctl close_all_connections -p <vhost> <reason>` on the broker's host.
    pub fn close_connections(&self) -> Result<usize, Error> {
        let Some((api, vhost)) = &self.vhost else {
            return Err(Error::ManagementApi(
                "an embedded broker has no connections to close".into(),
            ));
        };
        let listed = api.request("GET", &format!("/api/vhosts/{vhost}/connections"), "")?;
        let connections: Vec<Value> = serde_json::from_str(&listed)
            .map_err(|e| Error::ManagementApi(format!("the connection list: {e}")))?;
        let names: Vec<&str> = connections
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect();
        let mut closed = 0;
        for name in &names {
            let path = format!("/api/connections/{}", percent_encode(name));
            match api.exchange("DELETE", &path, "")? {
                Ok(_) => closed += 1,
                // Closed meanwhile (the list lags behind the broker): nothing to do.
                Err((404, _)) => {}
                Err((_, error)) => return Err(error),
            }
        }
        Ok(closed)
    }
}

impl TestBroker {
    /// Sends a request to RabbitMQ's management API (`GET /api/overview`, `PUT
    /// /api/policies/{vhost}/dlx` ...): `{vhost}` in `path` stands for this test's virtual host.
    /// Returns the response body. Only for a RabbitMQ test broker.
    ///
    /// ```no_run
    /// # fn demo(broker: &nameko::testing::TestBroker) -> Result<(), nameko::Error> {
    /// // Rejected messages of every queue go to the `dead-letters` exchange.
    /// broker.management_api(
    ///     "PUT",
    ///     "/api/policies/{vhost}/dlx",
    ///     r#"{"pattern": ".*", "apply-to": "queues",
    ///         "definition": {"dead-letter-exchange": "dead-letters"}}"#,
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn management_api(&self, method: &str, path: &str, body: &str) -> Result<String, Error> {
        let Some((api, vhost)) = &self.vhost else {
            return Err(Error::ManagementApi(
                "an embedded broker has no management API".into(),
            ));
        };
        api.request(
            method,
            &path.replace("{vhost}", &percent_encode(vhost)),
            body,
        )
    }

    /// How many consumers the queue `queue` of this test's virtual host has (e.g. instances of
    /// a service: `consumers("rpc-greeter_service")`). Only for a RabbitMQ test broker.
    pub fn consumers(&self, queue: &str) -> Result<usize, Error> {
        let Some((api, vhost)) = &self.vhost else {
            return Err(Error::ManagementApi(
                "an embedded broker has no management API".into(),
            ));
        };
        let info = api.request(
            "GET",
            &format!(
                "/api/queues/{}/{}",
                percent_encode(vhost),
                percent_encode(queue)
            ),
            "",
        )?;
        let info: Value = serde_json::from_str(&info)
            .map_err(|e| Error::ManagementApi(format!("the queue: {e}")))?;
        Ok(info.get("consumers").and_then(Value::as_u64).unwrap_or(0) as usize)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some((api, vhost)) = &self.vhost
            && let Err(e) = api.request("DELETE", &format!("/api/vhosts/{vhost}"), "")
        {
            tracing::warn!(%vhost, error = %e, "could not delete a test virtual host");
        }
    }
}
