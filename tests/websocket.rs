//! Websockets as a browser or a Nameko client sees them: Nameko's frames byte for byte, every
//! error kind with the connection staying open, context data from the upgrade request, and
//! the hub: channels, unicast, cleanup when a socket closes, and a slow socket dropped without
//! holding up the others.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nameko::prelude::*;
use nameko::testing::{TestCluster, TestServices};
use nameko::websocket::{HubError, WebSocketHub};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
#[error("no such room: {0}")]
struct NoSuchRoom(String);

#[derive(Dependencies)]
struct Chat {
    hub: WebSocketHub,
}

#[service(name = "chat")]
impl Chat {
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
    fn leave(&self, socket_id: String, room: String) -> Vec<String> {
        self.hub.unsubscribe(&socket_id, &room);
        self.hub.get_subscriptions(&socket_id)
    }

    #[ws_rpc]
    fn say(&self, socket_id: String, room: String, text: String) -> Result<usize, HubError> {
        self.hub
            .broadcast(&room, "said", &json!({"from": socket_id, "text": text}))
    }

    #[ws_rpc]
    fn whisper(&self, socket_id: String, to: String, text: String) -> Result<bool, HubError> {
        let _ = socket_id;
        self.hub.unicast(&to, "whispered", &json!({"text": text}))
    }

    #[ws_rpc]
    fn enter(&self, socket_id: String, room: String) -> Result<(), NoSuchRoom> {
        let _ = socket_id;
        Err(NoSuchRoom(room))
    }

    #[ws_rpc]
    fn flood(&self, socket_id: String, room: String, count: usize) -> Result<usize, HubError> {
        let _ = socket_id;
        let big = "x".repeat(10_000);
        let mut sent = 0;
        for n in 0..count {
            sent += self
                .hub
                .broadcast(&room, "flood", &json!({"n": n, "padding": big}))?;
        }
        Ok(sent)
    }

    #[ws_rpc]
    fn whoami(&self, socket_id: String) -> Value {
        let _ = socket_id;
        let data = WorkerContext::current()
            .map(|w| w.data().clone())
            .unwrap_or_default();
        json!(data)
    }
}

async fn start() -> TestCluster {
    TestServices::new()
        .with_config(|config| config.web_server_address = "127.0.0.1:0".into())
        .with_service::<Chat>()
        .start()
        .await
        .unwrap()
}

async fn connect_with(services: &TestCluster, headers: &[(&str, &str)]) -> (Socket, String) {
    let address = services.http_address().expect("an HTTP server");
    let mut request = format!("ws://{address}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = text(&mut socket).await;
    let prefix = r#"{"type": "event", "event": "connected", "data": {"socket_id": ""#;
    assert!(
        connected.starts_with(prefix) && connected.ends_with(r#""}}"#),
        "{connected}"
    );
    let socket_id = connected[prefix.len()..connected.len() - 3].to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&socket_id).unwrap().to_string(),
        socket_id
    );
    (socket, socket_id)
}

async fn connect(services: &TestCluster) -> (Socket, String) {
    connect_with(services, &[]).await
}

async fn text(socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("no websocket error");
        match message {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn request(socket: &mut Socket, frame: &str) -> String {
    socket.send(Message::Text(frame.into())).await.unwrap();
    text(socket).await
}

#[tokio::test]
async fn results_and_every_error_are_nameko_s_frames_byte_for_byte() {
    let services = start().await;
    let (mut socket, _) = connect(&services).await;
    assert_eq!(
        request(
            &mut socket,
            r#"{"method": "greet", "data": {"name": "Ann"}, "correlation_id": "c1"}"#
        )
        .await,
        r#"{"type": "result", "success": true, "data": "Hello, Ann! Gr\u00fc\u00dfe \ud83c\udf89", "correlation_id": "c1"}"#
    );
    assert_eq!(
        request(
            &mut socket,
            r#"{"method": "fly", "data": {}, "correlation_id": "c2"}"#
        )
        .await,
        r#"{"type": "result", "success": false, "error": {"exc_type": "MethodNotFound", "exc_path": "nameko.exceptions.MethodNotFound", "exc_args": [], "value": ""}, "correlation_id": "c2"}"#
    );
    assert_eq!(
        request(&mut socket, r#"{"method": "greet", "correlation_id": 3}"#).await,
        r#"{"type": "result", "success": false, "error": {"exc_type": "IncorrectSignature", "exc_path": "nameko.exceptions.IncorrectSignature", "exc_args": ["greet() missing 1 required positional argument: 'name'"], "value": "greet() missing 1 required positional argument: 'name'"}, "correlation_id": 3}"#
    );
    assert_eq!(
        request(&mut socket, "foo: bar").await,
        r#"{"type": "result", "success": false, "error": {"exc_type": "MalformedRequest", "exc_path": "nameko.exceptions.MalformedRequest", "exc_args": ["Invalid JSON data"], "value": "Invalid JSON data"}, "correlation_id": null}"#
    );
    let own = request(
        &mut socket,
        r#"{"method": "enter", "data": {"room": "attic"}, "correlation_id": "c5"}"#,
    )
    .await;
    let own: Value = serde_json::from_str(&own).unwrap();
    assert_eq!(own["success"], false);
    assert_eq!(own["error"]["exc_type"], "NoSuchRoom");
    assert_eq!(own["error"]["value"], "no such room: attic");
    // Still open, after every kind of error.
    assert_eq!(
        request(
            &mut socket,
            r#"{"method": "greet", "data": {"name": "Bo"}}"#
        )
        .await,
        r#"{"type": "result", "success": true, "data": "Hello, Bo! Gr\u00fc\u00dfe \ud83c\udf89", "correlation_id": null}"#
    );
    services.stop().await.unwrap();
}

#[tokio::test]
async fn the_hub_broadcasts_to_a_channel_unicasts_to_a_socket_and_forgets_closed_sockets() {
    let services = start().await;
    let (mut ann, ann_id) = connect(&services).await;
    let (mut bo, bo_id) = connect(&services).await;
    assert_eq!(
        request(
            &mut ann,
            r#"{"method": "join", "data": {"room": "lobby"}, "correlation_id": "1"}"#
        )
        .await,
        r#"{"type": "result", "success": true, "data": ["lobby"], "correlation_id": "1"}"#
    );
    request(&mut ann, r#"{"method": "join", "data": {"room": "attic"}}"#).await;
    assert_eq!(
        request(
            &mut ann,
            r#"{"method": "leave", "data": {"room": "attic"}}"#
        )
        .await,
        r#"{"type": "result", "success": true, "data": ["lobby"], "correlation_id": null}"#
    );
    let said = request(
        &mut bo,
        r#"{"method": "say", "data": {"room": "lobby", "text": "hi"}}"#,
    )
    .await;
    assert_eq!(
        said,
        r#"{"type": "result", "success": true, "data": 1, "correlation_id": null}"#
    );
    assert_eq!(
        text(&mut ann).await,
        format!(
            r#"{{"type": "event", "event": "said", "data": {{"from": "{bo_id}", "text": "hi"}}}}"#
        )
    );
    let whispered = request(
        &mut bo,
        &format!(r#"{{"method": "whisper", "data": {{"to": "{ann_id}", "text": "psst"}}}}"#),
    )
    .await;
    assert_eq!(
        whispered,
        r#"{"type": "result", "success": true, "data": true, "correlation_id": null}"#
    );
    assert_eq!(
        text(&mut ann).await,
        r#"{"type": "event", "event": "whispered", "data": {"text": "psst"}}"#
    );
    // Unknown sockets: unicast says false, subscribe is Nameko's ConnectionNotFound.
    let nobody = request(
        &mut bo,
        r#"{"method": "whisper", "data": {"to": "nobody", "text": "?"}}"#,
    )
    .await;
    assert!(nobody.contains(r#""data": false"#), "{nobody}");
    assert_eq!(
        request(&mut bo, r#"{"method": "subscribe_other", "data": {"other": "nobody", "room": "x"}, "correlation_id": "n"}"#).await,
        r#"{"type": "result", "success": false, "error": {"exc_type": "ConnectionNotFound", "exc_path": "nameko.exceptions.ConnectionNotFound", "exc_args": ["nobody"], "value": "nobody"}, "correlation_id": "n"}"#
    );
    // Ann goes: her subscriptions go with her.
    ann.close(None).await.unwrap();
    let mut recipients = String::new();
    for _ in 0..100 {
        recipients = request(
            &mut bo,
            r#"{"method": "say", "data": {"room": "lobby", "text": "anyone?"}}"#,
        )
        .await;
        if recipients.contains(r#""data": 0"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recipients.contains(r#""data": 0"#), "{recipients}");
    services.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_socket_is_dropped_and_the_others_get_every_event() {
    let services = start().await;
    let (mut slow, _) = connect(&services).await;
    let (mut quick, _) = connect(&services).await;
    let (mut sender, _) = connect(&services).await;
    request(&mut slow, r#"{"method": "join", "data": {"room": "news"}}"#).await;
    request(
        &mut quick,
        r#"{"method": "join", "data": {"room": "news"}}"#,
    )
    .await;
    // The quick one reads all the while; the slow one reads nothing.
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 2000 {
            let frame = text(&mut quick).await;
            assert!(frame.starts_with(r#"{"type": "event", "event": "flood""#));
            got += 1;
        }
        got
    });
    let flooded = tokio::time::timeout(
        Duration::from_secs(20),
        request(
            &mut sender,
            r#"{"method": "flood", "data": {"room": "news", "count": 2000}}"#,
        ),
    )
    .await
    .expect("a broadcast never waits for a slow socket");
    let sent: Value = serde_json::from_str(&flooded).unwrap();
    let sent = sent["data"].as_u64().unwrap();
    assert!(
        (2000..4000).contains(&sent),
        "the slow socket was dropped midway: {sent}"
    );
    assert_eq!(reader.await.unwrap(), 2000);
    // The slow socket, when it reads at last, finds its frames end: it was closed.
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
        if matches!(message, Err(_) | Ok(Message::Close(_))) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow socket was closed");
    services.stop().await.unwrap();
}

#[tokio::test]
async fn context_data_comes_from_the_upgrade_request() {
    let services = start().await;
    let (mut socket, _) = connect_with(
        &services,
        &[
            ("authorization", "Bearer tok-1"),
            ("accept-language", "fr"),
            ("user-agent", "tests/1.0"),
            ("nameko-user-id", "u-7"),
        ],
    )
    .await;
    let frame = request(&mut socket, r#"{"method": "whoami"}"#).await;
    let data = &serde_json::from_str::<Value>(&frame).unwrap()["data"];
    assert_eq!(data["auth_token"], "tok-1");
    assert_eq!(data["language"], "fr");
    assert_eq!(data["user_agent"], "tests/1.0");
    assert_eq!(data["user_id"], "u-7");
    services.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_get_of_the_websocket_path_is_refused() {
    let services = start().await;
    let address = services.http_address().unwrap();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 4"), "{reply}");
    services.stop().await.unwrap();
}
