//! Dependency providers as a user writes them: the lifecycle around the service and around
//! every worker, worker-scoped values, a refused worker, context data reaching handlers, the
//! entrypoint options `expected_exceptions` and `sensitive_arguments`, and the database example.

mod common;

#[path = "../examples/database.rs"]
#[allow(dead_code)]
mod database;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::TestBroker;
use nameko::prelude::*;
use nameko::service::WorkerResult;
use nameko::testing::TestServices;
use nameko::{Dependency, DependencyContext, Error};
use serde_json::{Value, json};

/// Records every hook it sees, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Dependency for Recorder {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Recorder::default())
    }

    async fn start(&self) -> Result<(), Error> {
        self.push("start".into());
        Ok(())
    }

    async fn stop(&self) {
        self.push("stop".into());
    }

    fn kill(&self) {
        self.push("kill".into());
    }

    async fn worker_setup(&self, worker: &WorkerContext) -> Result<(), Error> {
        self.push(format!("setup {}", worker.entrypoint()));
        worker.insert_local("recorder", worker.entrypoint().to_uppercase());
        Ok(())
    }

    async fn worker_result(
        &self,
        worker: &WorkerContext,
        result: &WorkerResult<'_>,
    ) -> Result<(), Error> {
        let outcome = match result {
            WorkerResult::Value(json) => format!("value {}", String::from_utf8_lossy(json)),
            WorkerResult::Done => "done".to_owned(),
            WorkerResult::Failed(error) => format!("failed {}", error.exc_type),
        };
        self.push(format!("result {} {outcome}", worker.entrypoint()));
        Ok(())
    }

    async fn worker_teardown(&self, worker: &WorkerContext) {
        let local = worker.local::<String>("recorder");
        self.push(format!(
            "teardown {} {}",
            worker.entrypoint(),
            local.as_deref().map_or("-", String::as_str)
        ));
    }
}

#[derive(Dependencies)]
pub struct Lifecycle {
    recorder: Recorder,
}

#[service(name = "lifecycle_svc")]
impl Lifecycle {
    #[rpc]
    async fn ok(&self) -> String {
        // What worker_setup kept for this worker.
        let worker = WorkerContext::current().expect("a worker");
        worker
            .local::<String>("recorder")
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    #[rpc]
    async fn fail(&self) -> Result<(), RemoteError> {
        Err(RemoteError::new("Nope", "no"))
    }

    #[rpc]
    fn explode(&self) -> u32 {
        panic!("boom")
    }
}

on_both_transports! {
    async fn lifecycle_hooks_run_around_the_service_and_every_worker(broker: &TestBroker) {
        let recorder = Recorder::default();
        let services = TestServices::on_uri(&broker.uri)
            .with_service::<Lifecycle>()
            .replace_dependency::<Lifecycle, _>("recorder", recorder.clone())
            .start()
            .await
            .unwrap();
        let client = services.rpc_client().await.unwrap();
        let svc = client.service("lifecycle_svc");
        assert_eq!(svc.call::<_, String>("ok", ()).await.unwrap(), "OK");
        let error = svc.call::<_, ()>("fail", ()).await.unwrap_err();
        assert!(error.to_string().contains("Nope"), "{error}");
        let error = svc.call::<_, u32>("explode", ()).await.unwrap_err();
        assert!(error.to_string().contains("boom"), "{error}");
        services.stop().await.unwrap();
        assert_eq!(
            recorder.lines(),
            [
                "start",
                "setup ok",
                "result ok value \"OK\"",
                "teardown ok OK",
                "setup fail",
                "result fail failed Nope",
                "teardown fail FAIL",
                "setup explode",
                "result explode failed WorkerPanic",
                "teardown explode EXPLODE",
                "stop",
            ]
        );
    }
}

#[tokio::test]
async fn killing_a_service_runs_its_dependencies_kill_hook_instead_of_stop() {
    let recorder = Recorder::default();
    let services = TestServices::new()
        .with_service::<Lifecycle>()
        .replace_dependency::<Lifecycle, _>("recorder", recorder.clone())
        .start()
        .await
        .unwrap();
    let client = services.rpc_client().await.unwrap();
    let svc = client.service("lifecycle_svc");
    assert_eq!(svc.call::<_, String>("ok", ()).await.unwrap(), "OK");
    services.kill().await;
    assert_eq!(
        recorder.lines(),
        [
            "start",
            "setup ok",
            "result ok value \"OK\"",
            "teardown ok OK",
            "kill"
        ]
    );
}

/// Refuses workers whose context data says `deny`.
pub struct Gate;

impl Dependency for Gate {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Gate)
    }

    async fn worker_setup(&self, worker: &WorkerContext) -> Result<(), Error> {
        if worker.data().contains_key("deny") {
            return Err(Error::other("denied by the gate"));
        }
        Ok(())
    }
}

#[derive(Dependencies)]
pub struct Gated {
    _gate: Gate,
    calls: Recorder,
}

#[service(name = "gated_svc")]
impl Gated {
    #[rpc]
    async fn touch(&self) -> usize {
        self.calls.push("touched".into());
        self.calls
            .lines()
            .iter()
            .filter(|l| *l == "touched")
            .count()
    }
}

#[tokio::test]
async fn a_refused_worker_setup_fails_the_call_and_the_method_does_not_run() {
    let calls = Recorder::default();
    let services = TestServices::new()
        .with_service::<Gated>()
        .replace_dependency::<Gated, _>("calls", calls.clone())
        .start()
        .await
        .unwrap();
    let hook = services.entrypoint_hook("gated_svc", "touch").unwrap();
    let denied = hook
        .clone()
        .with_context_data(BTreeMap::from([("deny".to_owned(), json!(true))]))
        .call(())
        .await
        .unwrap_err();
    assert_eq!(denied.exc_type, "DependencyError");
    assert!(denied.value.contains("denied by the gate"), "{denied:?}");
    assert!(!calls.lines().iter().any(|l| l == "touched"));
    // Over RPC too, and the service goes on serving.
    let client = services.rpc_client().await.unwrap();
    let denied = client
        .with_context_data(BTreeMap::from([("deny".to_owned(), json!(1))]))
        .service("gated_svc")
        .call::<_, usize>("touch", ())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("DependencyError"), "{denied}");
    assert_eq!(hook.call(()).await.unwrap(), json!(1));
    services.stop().await.unwrap();
}

#[derive(Dependencies)]
pub struct Relay {
    dispatch: EventDispatcher,
}

#[service(name = "relay_svc")]
impl Relay {
    #[rpc]
    async fn relay(&self, text: String) -> Result<(), nameko::events::DispatchError> {
        self.dispatch.dispatch("relayed", &text).await
    }
}

#[derive(Dependencies)]
pub struct Listener;

#[service(name = "listener_svc")]
impl Listener {
    #[event_handler("relay_svc", "relayed")]
    async fn on_relayed(&self, text: String) -> Result<(), RemoteError> {
        let worker = WorkerContext::current().expect("a worker");
        if worker.auth_token() != Some("secret-token")
            || worker.data().get("tenant") != Some(&json!("acme"))
        {
            return Err(RemoteError::new(
                "MissingContext",
                format!("{:?}", worker.data()),
            ));
        }
        let _ = text;
        Ok(())
    }
}

on_both_transports! {
    async fn context_data_set_by_a_client_reaches_an_event_handler_two_hops_away(broker: &TestBroker) {
        let services = TestServices::on_uri(&broker.uri)
            .with_service::<Relay>()
            .with_service::<Listener>()
            .start()
            .await
            .unwrap();
        let data = BTreeMap::from([
            ("auth_token".to_owned(), json!("secret-token")),
            ("tenant".to_owned(), json!("acme")),
        ]);
        let waiter = services.entrypoint_waiter("listener_svc", "on_relayed");
        let client = services.rpc_client().await.unwrap().with_context_data(data.clone());
        client.service("relay_svc").call::<_, ()>("relay", ["hello"]).await.unwrap();
        let finished = waiter.wait().await.unwrap();
        assert_eq!(finished.result(), Ok(&Value::Null), "{finished:?}");
        assert_eq!(finished.context().auth_token(), Some("secret-token"));
        // The stack ends with the relaying worker's call id, then the handler's own.
        let stack = finished.context().call_id_stack();
        assert!(stack.len() >= 2, "{stack:?}");
        assert!(stack[stack.len() - 2].starts_with("relay_svc.relay."), "{stack:?}");
        assert!(stack[stack.len() - 1].starts_with("listener_svc.on_relayed."), "{stack:?}");

        // A standalone dispatcher sends none, unless given some.
        let waiter = services.entrypoint_waiter("listener_svc", "on_relayed");
        services.event_dispatcher().dispatch("relay_svc", "relayed", "bare").await.unwrap();
        let bare = waiter.wait().await.unwrap();
        assert_eq!(bare.result().unwrap_err().exc_type, "MissingContext");
        let waiter = services.entrypoint_waiter("listener_svc", "on_relayed");
        services
            .event_dispatcher()
            .with_context_data(data)
            .dispatch("relay_svc", "relayed", "with context")
            .await
            .unwrap();
        assert_eq!(waiter.wait().await.unwrap().result(), Ok(&Value::Null));
        services.stop().await.unwrap();
    }
}

/// Captures the log lines of this test binary (a global subscriber: per-thread ones race with
/// the callsite cache when tests run in parallel). Tests filter them by service name.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn global() -> &'static Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber");
            logs
        })
    }

    fn lines_about(&self, service: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(service))
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug)]
pub struct WrongPassword;

impl std::fmt::Display for WrongPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrong password")
    }
}

#[derive(Dependencies)]
pub struct Accounts;

#[service(name = "accounts_svc")]
impl Accounts {
    #[rpc(
        expected_exceptions = "WrongPassword",
        sensitive_arguments = "password,profile.pin"
    )]
    async fn login(
        &self,
        user: String,
        password: String,
        profile: Value,
    ) -> Result<bool, WrongPassword> {
        let _ = (user, password, profile);
        Err(WrongPassword)
    }

    #[rpc(sensitive_arguments = "password")]
    async fn reset(&self, user: String, password: String) -> Result<bool, String> {
        let _ = (user, password);
        Err("the reset service is down".to_owned())
    }

    #[rpc(sensitive_arguments = "pin")]
    async fn unlock(&self, pin: u32) -> bool {
        pin == 0
    }

    #[event_handler("bank", "payment", sensitive_arguments = "payment.card")]
    async fn on_payment(&self, payment: Value) -> Result<(), String> {
        let _ = payment;
        Err("declined".to_owned())
    }
}

#[tokio::test]
async fn expected_errors_are_warnings_and_sensitive_arguments_are_never_logged() {
    let logs = Logs::global();
    let services = TestServices::new()
        .with_service::<Accounts>()
        .start()
        .await
        .unwrap();
    let client = services.rpc_client().await.unwrap();
    let accounts = client.service("accounts_svc");
    let error = accounts
        .call_with::<_, _, bool>(
            "login",
            (),
            json!({"user": "tim", "password": "swordfish", "profile": {"pin": 1234, "colour": "blue"}}),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("WrongPassword"), "{error}");
    accounts
        .call::<_, bool>("reset", ["tim", "hunter2"])
        .await
        .unwrap_err();
    // The argument does not fit its type: serde's message quotes it, the log must not.
    let wrong = accounts
        .call::<_, bool>("unlock", ["secret-pin-9"])
        .await
        .unwrap_err();
    assert!(matches!(wrong, RpcError::IncorrectSignature(_)), "{wrong}");
    let waiter = services.entrypoint_waiter("accounts_svc", "on_payment");
    services
        .event_dispatcher()
        .dispatch(
            "bank",
            "payment",
            &json!({"card": "4111-1111", "amount": 5}),
        )
        .await
        .unwrap();
    waiter.wait().await.unwrap().into_result().unwrap_err();
    services.stop().await.unwrap();

    let lines = logs.lines_about("accounts_svc");
    let all = lines.join("\n");
    assert!(
        all.contains("entrypoint=\"unlock\""),
        "the unlock failure is logged:\n{all}"
    );
    for secret in ["swordfish", "1234", "hunter2", "4111-1111", "secret-pin-9"] {
        assert!(!all.contains(secret), "`{secret}` was logged:\n{all}");
    }
    let login = lines
        .iter()
        .find(|l| l.contains("entrypoint=\"login\"") || l.contains("entrypoint=login"))
        .unwrap_or_else(|| panic!("no login line:\n{all}"));
    assert!(
        login.contains("WARN") && login.contains("worker failed (expected)"),
        "{login}"
    );
    assert!(
        login.contains("********") && login.contains("blue") && login.contains("tim"),
        "{login}"
    );
    let reset = lines
        .iter()
        .find(|l| l.contains("reset service is down"))
        .unwrap_or_else(|| panic!("no reset line:\n{all}"));
    assert!(
        reset.contains("ERROR") && reset.contains("worker failed") && !reset.contains("(expected)"),
        "{reset}"
    );
    let payment = lines
        .iter()
        .find(|l| l.contains("declined"))
        .unwrap_or_else(|| panic!("no payment line:\n{all}"));
    assert!(
        payment.contains("********") && payment.contains("amount"),
        "{payment}"
    );
}

#[derive(Dependencies)]
pub struct Vault;

#[service(name = "vault_svc")]
impl Vault {
    #[http("PUT", "/vault/<owner>/<code>", sensitive_arguments = "code")]
    async fn open(&self, owner: String, code: String) -> Result<String, RemoteError> {
        let _ = code;
        Err(RemoteError::new(
            "Jammed",
            format!("the vault of {owner} is jammed"),
        ))
    }

    #[timer(interval = "20ms", expected_exceptions = "Maintenance")]
    async fn audit(&self) -> Result<(), RemoteError> {
        Err(RemoteError::new("Maintenance", "audit postponed"))
    }
}

#[tokio::test]
async fn http_and_timer_entrypoints_take_the_same_options() {
    use tower::ServiceExt;
    let logs = Logs::global();
    let services = TestServices::new()
        .with_service::<Vault>()
        .start()
        .await
        .unwrap();
    // The timer's failure is expected: a warning (and the waiter sees the worker finish).
    let audit = services.entrypoint_waiter("vault_svc", "audit");
    let finished = audit.wait().await.unwrap();
    assert_eq!(finished.result().unwrap_err().exc_type, "Maintenance");
    assert!(finished.payload().is_none(), "a timer has no payload");

    let request = axum::http::Request::put("/vault/ann/7319-5528")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = services
        .http_router()
        .unwrap()
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 500, "an unexpected error is a 500");
    services.stop().await.unwrap();

    let lines = logs.lines_about("vault_svc");
    let all = lines.join("\n");
    assert!(!all.contains("7319-5528"), "the code was logged:\n{all}");
    let open = lines
        .iter()
        .find(|l| l.contains("is jammed"))
        .unwrap_or_else(|| panic!("no line about the failed request:\n{all}"));
    assert!(
        open.contains("ERROR") && open.contains("********") && open.contains("ann"),
        "{open}"
    );
    let audit = lines
        .iter()
        .find(|l| l.contains("audit postponed"))
        .unwrap_or_else(|| panic!("no line about the failed timer:\n{all}"));
    assert!(
        audit.contains("WARN") && audit.contains("worker failed (expected)"),
        "{audit}"
    );
}

#[tokio::test]
async fn the_database_example_commits_successful_workers_and_rolls_back_failed_ones() {
    let dir = std::env::temp_dir().join(format!("nameko-db-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("todo.sqlite").display().to_string();
    let services = TestServices::new()
        .with_service::<database::TodoService>()
        .with_config(move |config| {
            config.define("DATABASE_PATH", &path).unwrap();
            config.define("DATABASE_POOL_SIZE", "2").unwrap();
        })
        .start()
        .await
        .unwrap();
    let client = services.rpc_client().await.unwrap();
    let todos = client.service("todo_service");
    let first: i64 = todos.call("add", ["write the docs"]).await.unwrap();
    let error = todos
        .call::<_, Vec<i64>>("add_many", [["ship it", ""]])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("EmptyTitle"), "{error}");
    let error = todos.call::<_, i64>("add", [""]).await.unwrap_err();
    assert!(error.to_string().contains("EmptyTitle"), "{error}");
    let ids: Vec<i64> = todos
        .call("add_many", [["test it", "ship it"]])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Many workers at once, each in its own transaction.
    let concurrent = futures_util::future::join_all((0..20).map(|i| {
        let todos = todos.clone();
        async move { todos.call::<_, i64>("add", [format!("task {i}")]).await }
    }))
    .await;
    assert!(concurrent.iter().all(Result::is_ok), "{concurrent:?}");
    let list: Vec<database::Todo> = todos.call("list", ()).await.unwrap();
    let titles: Vec<&str> = list.iter().map(|t| t.title.as_str()).collect();
    assert_eq!(
        &titles[..3],
        ["write the docs", "test it", "ship it"],
        "the failed add_many left nothing behind"
    );
    assert_eq!(list[0].id, first);
    assert_eq!(list.len(), 23);
    services.stop().await.unwrap();
    // Stopped: the pool is closed, the data is on disk.
    let connection = rusqlite::Connection::open(dir.join("todo.sqlite")).unwrap();
    let count: i64 = connection
        .query_row("SELECT COUNT(*) FROM todos", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 23);
    drop(connection);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_database_example_works_in_a_unit_test_without_a_broker() {
    let dir = std::env::temp_dir().join(format!("nameko-db-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = nameko::Config::default();
    config
        .define(
            "DATABASE_PATH",
            &dir.join("todo.sqlite").display().to_string(),
        )
        .unwrap();
    let service = nameko::testing::worker_factory::<database::TodoService>()
        .with_config(config)
        .build()
        .await
        .unwrap();
    // As a worker would run it: the failing call's transaction is rolled back.
    let result = nameko::testing::run_as_worker(&service, "add_many", async {
        service.add_many(vec!["kept?".into(), "".into()])
    })
    .await
    .unwrap();
    assert!(matches!(result, Err(database::TodoError::EmptyTitle)));
    let id = nameko::testing::run_as_worker(&service, "add", async { service.add("kept".into()) })
        .await
        .unwrap()
        .unwrap();
    let list = service.list().unwrap();
    assert_eq!(
        list,
        [database::Todo {
            id,
            title: "kept".into()
        }]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds requests until the test opens it.
#[derive(Clone)]
pub struct Gate2(Arc<tokio::sync::Semaphore>);

impl Default for Gate2 {
    fn default() -> Self {
        Gate2(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Dependency for Gate2 {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Gate2::default())
    }
}

#[derive(Dependencies)]
pub struct Slow {
    gate: Gate2,
    log: Recorder,
}

#[service(name = "slow_svc")]
impl Slow {
    #[http("GET", "/slow")]
    async fn slow(&self) -> String {
        self.log.push("request started".into());
        let _permit = self.gate.0.acquire().await.unwrap();
        self.log.push("request done".into());
        "done".into()
    }
}

#[tokio::test]
async fn a_stop_waits_for_http_workers_before_stopping_the_dependencies() {
    use tower::ServiceExt;
    let (gate, log) = (Gate2::default(), Recorder::default());
    let services = TestServices::new()
        .with_service::<Slow>()
        .replace_dependency::<Slow, _>("gate", gate.clone())
        .replace_dependency::<Slow, _>("log", log.clone())
        .start()
        .await
        .unwrap();
    let router = services.http_router().unwrap();
    let request = tokio::spawn(async move {
        let request = axum::http::Request::get("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    });
    while !log.lines().contains(&"request started".to_owned()) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let stopping = tokio::spawn(services.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events = || -> Vec<String> {
        log.lines()
            .into_iter()
            .filter(|l| {
                !l.starts_with("setup") && !l.starts_with("result") && !l.starts_with("teardown")
            })
            .collect()
    };
    assert_eq!(
        events(),
        ["start", "request started"],
        "stopped with a request in flight"
    );
    gate.0.add_permits(1);
    assert_eq!(request.await.unwrap(), 200);
    stopping.await.unwrap().unwrap();
    assert_eq!(
        events(),
        ["start", "request started", "request done", "stop"]
    );
}

/// Refuses every success, as a failed commit would.
pub struct Refuser;

impl Dependency for Refuser {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Refuser)
    }

    async fn worker_result(
        &self,
        _worker: &WorkerContext,
        result: &WorkerResult<'_>,
    ) -> Result<(), Error> {
        match result.json() {
            Some(b"\"commit fails\"") => Err(Error::other("the commit failed")),
            _ => Ok(()),
        }
    }
}

/// Cannot start.
pub struct Broken;

impl Dependency for Broken {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Broken)
    }

    async fn start(&self) -> Result<(), Error> {
        Err(Error::other("the disk is gone"))
    }
}

#[derive(Dependencies)]
pub struct Committing {
    _refuser: Refuser,
}

#[service(name = "committing_svc")]
impl Committing {
    #[rpc]
    async fn echo(&self, text: String) -> String {
        text
    }
}

#[derive(Dependencies)]
pub struct HalfStarted {
    log: Recorder,
    _broken: Broken,
}

#[service(name = "half_started_svc")]
impl HalfStarted {
    #[rpc]
    async fn ping(&self) {}
}

#[tokio::test]
async fn a_dependency_can_refuse_a_success_and_a_failed_start_stops_what_started() {
    let services = TestServices::new()
        .with_service::<Committing>()
        .start()
        .await
        .unwrap();
    let client = services.rpc_client().await.unwrap();
    let svc = client.service("committing_svc");
    assert_eq!(
        svc.call::<_, String>("echo", ["fine"]).await.unwrap(),
        "fine"
    );
    let refused = svc
        .call::<_, String>("echo", ["commit fails"])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("DependencyError"), "{refused}");
    assert!(
        refused.to_string().contains("the commit failed"),
        "{refused}"
    );
    let hook = services.entrypoint_hook("committing_svc", "echo").unwrap();
    services.stop().await.unwrap();
    // A hook fired after the stop is refused, not run against stopped dependencies.
    let late = hook.call(["late"]).await.unwrap_err();
    assert_eq!(late.exc_type, "ServiceStopped");

    let log = Recorder::default();
    let failed = TestServices::new()
        .with_service::<HalfStarted>()
        .replace_dependency::<HalfStarted, _>("log", log.clone())
        .start()
        .await
        .err()
        .unwrap();
    assert!(failed.to_string().contains("the disk is gone"), "{failed}");
    assert_eq!(log.lines(), ["start", "stop"]);
}
