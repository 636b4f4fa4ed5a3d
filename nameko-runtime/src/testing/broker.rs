//! Brokers for tests: an embedded one of their own, or a RabbitMQ virtual host of their own
//! (made and deleted through the management API, which this module speaks).

use std::time::Duration;

use serde_json::Value;

use crate::error::Error;
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

    /// Closes every client connection to this test's virtual host from the broker's side, as a
    /// broker restart or a network failure would; returns how many it closed. Only for a
    /// RabbitMQ test broker (its management API does it, and lists a new connection only after
    /// its next statistics round, a few seconds: call again while it returns 0).
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

/// RabbitMQ's management API, spoken with a few lines of HTTP/1.0.
#[derive(Debug, Clone)]
struct ManagementApi {
    host: String,
    user: String,
    auth: String,
}

impl ManagementApi {
    fn parse(uri: &str) -> Result<ManagementApi, Error> {
        let invalid = || {
            Error::Config(format!(
                "the management API's URI is `http://user:password@host:port`, not `{}`",
                crate::transport::mask_password(uri)
            ))
        };
        let rest = uri.strip_prefix("http://").ok_or_else(invalid)?;
        let (userinfo, host) = rest
            .trim_end_matches('/')
            .rsplit_once('@')
            .ok_or_else(invalid)?;
        // As in any URI, the user and password may be percent-encoded.
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let user = crate::http::percent_decode(user).into_owned();
        let password = crate::http::percent_decode(password);
        Ok(ManagementApi {
            host: host.to_owned(),
            auth: base64(format!("{user}:{password}").as_bytes()),
            user,
        })
    }

    /// Sends one request (HTTP/1.0: the answer is never chunked) and returns the answer's body.
    fn request(&self, method: &str, path: &str, body: &str) -> Result<String, Error> {
        self.exchange(method, path, body)?
            .map_err(|(_, error)| error)
    }

    /// Sends one request: the answer's body, or its status and an error saying it, or an error
    /// if there was no answer.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Result<String, (u16, Error)>, Error> {
        use std::io::{Read, Write};
        let failed = |e: String| Error::ManagementApi(format!("{method} {path}: {e}"));
        let timeout = Duration::from_secs(10);
        let address = std::net::ToSocketAddrs::to_socket_addrs(&self.host)
            .map_err(|e| failed(e.to_string()))?
            .next()
            .ok_or_else(|| failed(format!("no address for {}", self.host)))?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
            .map_err(|e| failed(e.to_string()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| failed(e.to_string()))?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| failed(e.to_string()))?;
        let status = response.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            Ok(Ok(body.to_owned()))
        } else {
            let status = status.parse().unwrap_or(0);
            Ok(Err((
                status,
                failed(response.lines().next().unwrap_or("").to_owned()),
            )))
        }
    }
}

/// Percent-encodes a path segment (a user name, say).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
    }

    #[test]
    fn management_uris_give_host_user_and_credentials() {
        let api = ManagementApi::parse("http://admin:s3cr@t@rabbit:15672/").unwrap();
        assert_eq!(api.host, "rabbit:15672");
        assert_eq!(api.user, "admin");
        assert_eq!(api.auth, base64(b"admin:s3cr@t"));
        let encoded = ManagementApi::parse("http://ops%40site:p%2Fw@rabbit:15672").unwrap();
        assert_eq!(encoded.user, "ops@site");
        assert_eq!(encoded.auth, base64(b"ops@site:p/w"));
        let wrong = ManagementApi::parse("https://rabbit:15672").unwrap_err();
        assert!(
            wrong.to_string().contains("http://user:password@host:port"),
            "{wrong}"
        );
        assert!(ManagementApi::parse("http://rabbit:15672").is_err());
    }

    #[test]
    fn user_names_are_percent_encoded_in_paths() {
        assert_eq!(percent_encode("guest"), "guest");
        assert_eq!(percent_encode("a b/c@d"), "a%20b%2Fc%40d");
    }
}
