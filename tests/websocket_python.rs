//! A differential test: the same websocket frames sent to Python Nameko 2.14.1's websocket
//! server and to a Rust service written the same way; every answer and every event frame must
//! be the same bytes (socket ids aside).

mod common;

use std::time::Duration;

use common::{PythonServices, TestBroker, python};
use futures_util::{SinkExt, StreamExt};
use nameko::prelude::*;
use nameko::testing::TestServices;
use nameko::websocket::{HubError, WebSocketHub};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `py_services.NoSuchRoom`, as Python serialises it.
#[derive(Debug)]
struct NoSuchRoom(String);

impl ToRemoteError for NoSuchRoom {
    fn to_remote_error(&self) -> RemoteError {
        RemoteError::new("NoSuchRoom", self.0.clone()).with_path("py_services.NoSuchRoom")
    }
}

#[derive(Serialize)]
struct Said {
    text: String,
    n: (u8, f64, Option<()>, bool),
}

#[derive(Serialize)]
struct Sum {
    sum: i64,
    args: [i64; 2],
}

/// `py_services.PythonChat`, in Rust.
#[derive(Dependencies)]
struct RustChat {
    hub: WebSocketHub,
}

#[service(name = "rust_chat")]
impl RustChat {
    #[ws_rpc]
    fn greet(&self, socket_id: String, name: String) -> String {
        let _ = socket_id;
        format!("Hello, {name}! Grüße 🎉")
    }

    #[ws_rpc]
    fn join(&self, socket_id: String, room: String) -> Result<Vec<String>, HubError> {
        self.hub.subscribe(&socket_id, &room)?;
        Ok(self.hub.get_subscriptions(&socket_id))
    }

    #[ws_rpc]
    fn leave(&self, socket_id: String, room: String) -> Vec<String> {
        self.hub.unsubscribe(&socket_id, &room);
        self.hub.get_subscriptions(&socket_id)
    }

    #[ws_rpc]
    fn say(&self, socket_id: String, room: String, text: String) -> Result<(), HubError> {
        let _ = socket_id;
        let said = Said {
            text,
            n: (1, 2.5, None, true),
        };
        self.hub.broadcast(&room, "said", &said).map(drop)
    }

    #[ws_rpc]
    fn whisper(&self, socket_id: String, to: String, text: String) -> Result<bool, HubError> {
        let _ = socket_id;
        self.hub
            .unicast(&to, "whispered", &serde_json::json!({"text": text}))
    }

    #[ws_rpc]
    fn subscribe_other(
        &self,
        socket_id: String,
        other: String,
        room: String,
    ) -> Result<(), HubError> {
        let _ = socket_id;
        self.hub.subscribe(&other, &room)
    }

    #[ws_rpc]
    fn enter(&self, socket_id: String, room: String) -> Result<(), NoSuchRoom> {
        let _ = socket_id;
        Err(NoSuchRoom(room))
    }

    #[ws_rpc]
    fn add(&self, socket_id: String, a: i64, b: Option<i64>) -> Sum {
        let _ = socket_id;
        let b = b.unwrap_or(10);
        Sum {
            sum: a + b,
            args: [a, b],
        }
    }
}

async fn next_text(socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("no websocket error");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    }
}

/// Connects, returning the socket and its id (from the `connected` frame).
async fn connect(address: &str) -> (Socket, String, String) {
    let mut last_error = String::new();
    for _ in 0..150 {
        match tokio_tungstenite::connect_async(format!("ws://{address}/ws")).await {
            Ok((mut socket, _)) => {
                let connected = next_text(&mut socket).await;
                let id: serde_json::Value = serde_json::from_str(&connected).unwrap();
                let id = id["data"]["socket_id"].as_str().unwrap().to_owned();
                return (socket, id, connected);
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no websocket server at {address}: {last_error}");
}

/// The conversation, as each server answers it: every frame received, socket ids replaced by
/// `<A>` and `<B>`.
async fn conversation(address: &str) -> Vec<String> {
    let (mut a, a_id, a_connected) = connect(address).await;
    let (mut b, b_id, b_connected) = connect(address).await;
    let mut frames = vec![a_connected, b_connected];
    let to_a = [
        r#"{"method": "greet", "data": {"name": "Ann"}, "correlation_id": "1"}"#,
        r#"{"method": "greet", "data": {}, "correlation_id": 2}"#,
        r#"{"method": "fly", "correlation_id": "3"}"#,
        "foo: bar",
        r#"{"method": "add", "data": {"a": 1}, "correlation_id": "5"}"#,
        r#"{"method": "add", "data": {"a": 1, "b": 2, "c": 3}, "correlation_id": "6"}"#,
        r#"{"method": "enter", "data": {"room": "attic"}, "correlation_id": "7"}"#,
        r#"{"method": "join", "data": {"room": "lobby"}, "correlation_id": "8"}"#,
        r#"{"method": "join", "data": {"room": "attic"}, "correlation_id": "9"}"#,
        r#"{"method": "leave", "data": {"room": "attic"}, "correlation_id": "10"}"#,
        r#"{"method": "greet", "data": {"name": "x"}, "correlation_id": {"k": [1, 2]}}"#,
        r#"{"method": "greet", "data": null, "correlation_id": "12"}"#,
        r#"{"method": "greet", "data": [1], "correlation_id": "13"}"#,
        r#"{"method": "greet", "data": "Ann", "correlation_id": "14"}"#,
        r#"[1, 2]"#,
    ];
    for frame in to_a {
        a.send(Message::Text(frame.into())).await.unwrap();
        frames.push(next_text(&mut a).await);
    }
    let to_b = [
        r#"{"method": "say", "data": {"room": "lobby", "text": "h\u00e9"}, "correlation_id": "b1"}"#.to_owned(),
        format!(r#"{{"method": "whisper", "data": {{"to": "{a_id}", "text": "psst"}}, "correlation_id": "b2"}}"#),
        r#"{"method": "whisper", "data": {"to": "nobody", "text": "?"}, "correlation_id": "b3"}"#.to_owned(),
        r#"{"method": "subscribe_other", "data": {"other": "nobody", "room": "x"}, "correlation_id": "b4"}"#.to_owned(),
    ];
    for frame in to_b {
        b.send(Message::Text(frame.into())).await.unwrap();
        frames.push(next_text(&mut b).await);
    }
    // What reached A meanwhile: the broadcast, then the whisper.
    frames.push(next_text(&mut a).await);
    frames.push(next_text(&mut a).await);
    frames
        .into_iter()
        .map(|f| f.replace(&a_id, "<A>").replace(&b_id, "<B>"))
        .collect()
}

#[tokio::test]
async fn rust_and_python_websocket_servers_answer_the_same_frames_alike() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let python_address = format!("127.0.0.1:{port}");
    let _python = PythonServices::start_with(
        &python,
        &broker,
        &["PythonChat"],
        &format!("WEB_SERVER_ADDRESS: '{python_address}'\n"),
    );
    let rust = TestServices::new()
        .with_config(|config| config.web_server_address = "127.0.0.1:0".into())
        .with_service::<RustChat>()
        .start()
        .await
        .unwrap();
    let rust_address = rust.http_address().unwrap().to_string();
    let from_python = conversation(&python_address).await;
    let from_rust = conversation(&rust_address).await;
    for (python, rust) in from_python.iter().zip(&from_rust) {
        assert_eq!(rust, python, "\nrust:   {rust}\npython: {python}");
    }
    assert_eq!(from_rust.len(), from_python.len());
    rust.stop().await.unwrap();
}

#[tokio::test]
async fn a_rust_hub_broadcast_reaches_a_python_websocket_client() {
    let Some(python) = python() else { return };
    let rust = TestServices::new()
        .with_config(|config| config.web_server_address = "127.0.0.1:0".into())
        .with_service::<RustChat>()
        .start()
        .await
        .unwrap();
    let address = rust.http_address().unwrap().to_string();
    // The Python client joins `lobby`, then waits for one event.
    let client = tokio::process::Command::new(&python)
        .arg(common::interop_dir().join("py_ws_client.py"))
        .args([address.as_str(), "join", r#"{"room": "lobby"}"#, "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run py_ws_client.py");
    let waiting = tokio::spawn(client.wait_with_output());
    // A Rust client says something in the lobby until the Python client, once in it, has
    // heard it and ended.
    let (mut rust_client, _, _) = connect(&address).await;
    for _ in 0..300 {
        let frame = r#"{"method": "say", "data": {"room": "lobby", "text": "to python"}}"#;
        rust_client.send(Message::Text(frame.into())).await.unwrap();
        next_text(&mut rust_client).await;
        if waiting.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the Python client ends")
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "py_ws_client.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        [
            r#"{"type": "result", "success": true, "data": ["lobby"], "correlation_id": "py"}"#,
            r#"{"type": "event", "event": "said", "data": {"text": "to python", "n": [1, 2.5, null, true]}}"#,
        ]
    );
    rust.stop().await.unwrap();
}
