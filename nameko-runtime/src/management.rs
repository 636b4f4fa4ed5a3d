//! RabbitMQ's management API, spoken with a few lines of HTTP/1.0 (blocking: a few short
//! requests, for test brokers and service discovery; call it from `spawn_blocking` in async
//! code that must not block).

use std::time::Duration;

use crate::error::Error;

/// RabbitMQ's management API, spoken with a few lines of HTTP/1.0.
#[derive(Debug, Clone)]
pub(crate) struct ManagementApi {
    host: String,
    pub(crate) user: String,
    auth: String,
}

impl ManagementApi {
    pub(crate) fn parse(uri: &str) -> Result<ManagementApi, Error> {
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
    pub(crate) fn request(&self, method: &str, path: &str, body: &str) -> Result<String, Error> {
        self.exchange(method, path, body)?
            .map_err(|(_, error)| error)
    }

    /// Sends one request: the answer's body, or its status and an error saying it, or an error
    /// if there was no answer.
    pub(crate) fn exchange(
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
pub(crate) fn percent_encode(segment: &str) -> String {
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

/// The management API RabbitMQ serves beside the broker of an AMQP URI, by default
/// (`http://user:password@host:15672`, the same credentials), and the URI's virtual host.
pub(crate) fn management_defaults(uri: &str) -> Result<(String, String), String> {
    let parsed = crate::transport::amqp::parse_amqp_uri(uri)?;
    let userinfo = &parsed.authority.userinfo;
    let host = &parsed.authority.host;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let encode = percent_encode;
    Ok((
        format!(
            "http://{}:{}@{host}:15672",
            encode(&userinfo.username),
            encode(&userinfo.password)
        ),
        parsed.vhost,
    ))
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
    fn the_management_api_is_beside_the_broker() {
        assert_eq!(
            management_defaults("amqp://ops:s%40cret@rabbit:5672/prod").unwrap(),
            (
                "http://ops:s%40cret@rabbit:15672".to_owned(),
                "prod".to_owned()
            )
        );
        assert_eq!(
            management_defaults("amqp://guest:guest@localhost")
                .unwrap()
                .1,
            "/"
        );
    }

    #[test]
    fn user_names_are_percent_encoded_in_paths() {
        assert_eq!(percent_encode("guest"), "guest");
        assert_eq!(percent_encode("a b/c@d"), "a%20b%2Fc%40d");
    }
}
