//! The webapp example in a real browser: headless Chromium, driven through the DevTools
//! protocol, loads the page, multiplies, greets, dispatches an event and places an order, and
//! sees each answer, and the live panel, as a user would.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Running, chromium, example};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page of the browser, driven through the DevTools protocol.
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let frame = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::Text(frame.into())).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("the browser answers")
                .expect("the DevTools socket is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn wait_for(&mut self, what: &str, expression: &str) {
        for _ in 0..200 {
            if self.eval(expression).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body = self.eval("document.body.innerText").await;
        panic!("timed out waiting until {what}; the page shows:\n{body}");
    }

    /// The text of element `id`.
    async fn text(&mut self, id: &str) -> String {
        let value = self
            .eval(&format!("document.getElementById('{id}').textContent"))
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `127.0.0.1:port`, the body (read by its length: the DevTools server keeps the
/// connection open).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&reply).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                return body.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Decodes standard base64 (a screenshot).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        let n = n.to_be_bytes();
        out.extend_from_slice(&n[1..chunk.len()]);
    }
    out
}

#[tokio::test]
async fn the_webapp_works_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    // The webapp, on the embedded broker.
    let port = free_port();
    let mut child = Command::new(example("webapp"))
        .args([
            "--broker",
            "memory://",
            "--web-server-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the webapp example");
    let stdout = child.stdout.take().unwrap();
    let _webapp = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines.next().expect("the webapp says where it is").unwrap();
    assert_eq!(
        banner,
        format!("The webapp is at http://localhost:{port}/ (Ctrl-C stops it)")
    );

    // The browser, headless, with a profile of its own.
    let profile = std::env::temp_dir().join(format!("nameko-chromium-{}", uuid::Uuid::new_v4()));
    let browser = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1100,760")
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let _browser = Running(browser);
    let mut devtools_port = None;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort"))
            && let Some(Ok(port)) = text.lines().next().map(str::parse::<u16>)
        {
            devtools_port = Some(port);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let devtools_port = devtools_port.expect("chromium's DevTools port within 20 s");
    let targets: Value = serde_json::from_str(&http_get(devtools_port, "/json/list")).unwrap();
    let target = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page");
    // Chromium listens on 127.0.0.1, and names it `localhost` (which may be `::1` first).
    let url = target["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .replace("localhost", "127.0.0.1");
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut page = Page { socket, next_id: 0 };

    page.command(
        "Page.navigate",
        json!({"url": format!("http://127.0.0.1:{port}/")}),
    )
    .await;
    page.wait_for(
        "the live panel is connected",
        "document.getElementById('status')?.textContent === 'connected'",
    )
    .await;

    // Multiply: 6 × 7, through the multiply service's HTTP route.
    page.eval("document.querySelector('#multiply-form button').click()")
        .await;
    page.wait_for(
        "the product shows",
        "document.getElementById('product').textContent !== ''",
    )
    .await;
    assert_eq!(page.text("product").await, "42");

    // Greet, through the expanded greeter over RPC.
    page.eval("document.getElementById('name').value = 'Ann'; document.querySelector('#greet-form button').click()").await;
    page.wait_for(
        "the greeting shows",
        "document.getElementById('greeting').textContent !== ''",
    )
    .await;
    assert_eq!(
        page.text("greeting").await,
        "Hello Ann! Welcome to Pygotham!"
    );

    // Dispatch my_event: it comes back live through the hub.
    let token = format!("hello {}", uuid::Uuid::new_v4().simple());
    page.eval(&format!("document.getElementById('event-text').value = '{token}'; document.querySelector('#event-form button').click()")).await;
    page.wait_for(
        "the event shows live",
        &format!("document.getElementById('live').textContent.includes('{token}')"),
    )
    .await;

    // Order: published to a queue, taken by a #[consume] method, shown live.
    page.eval("document.getElementById('item').value = 'eggs'; document.querySelector('#order-form button').click()").await;
    page.wait_for(
        "the order shows live",
        "document.getElementById('live').textContent.includes('1 × eggs')",
    )
    .await;

    // The ping service's words tick by.
    page.wait_for("a ping word shows", "['SPAM', 'EGG', 'BACON', 'SPAMMY SPAM'].includes(document.getElementById('ping').textContent)").await;

    // A screenshot, for the README when asked (`NAMEKO_WEBAPP_SCREENSHOT=docs/webapp.png`).
    let shot = page
        .command("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    if let Ok(path) = std::env::var("NAMEKO_WEBAPP_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    let _ = std::fs::remove_dir_all(&profile);
}
