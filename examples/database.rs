//! A dependency of the kind users write: a pool of SQLite connections, opened when the service
//! starts and closed when it stops, giving each worker a transaction that is committed when the
//! worker succeeds and rolled back when it fails.
//!
//! ```text
//! cargo run --example database -- run                      # embedded broker, a temporary file
//! cargo run --example database -- run --define DATABASE_PATH=/tmp/todo.sqlite
//! nameko call todo_service.add '["write the docs"]'        # with --broker, in another shell
//! ```
//!
//! `add_many(["a", ""])` inserts `a`, then fails on the empty title: its transaction is rolled
//! back, so `a` is not in `list()` either.

use std::sync::Mutex;

use nameko::prelude::*;
use nameko::service::WorkerResult;
use nameko::{Dependency, DependencyContext, Error};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// The schema, applied when the pool opens.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL
)";

/// A pool of SQLite connections with a transaction per worker.
///
/// Configuration: `DATABASE_PATH` (default: `nameko-todo.sqlite` in the temporary directory),
/// `DATABASE_POOL_SIZE` (default 4): the connections opened at start and kept idle between
/// workers; more are opened when more workers run at once, and closed when they finish.
///
/// Every worker's transaction is `BEGIN IMMEDIATE`: workers of the service write one at a time
/// (SQLite has one writer), and a method that calls back into its own service while holding
/// its transaction would wait for itself (for the 5 s busy timeout).
pub struct Database {
    field: &'static str,
    path: String,
    size: usize,
    idle: Mutex<Vec<Connection>>,
}

/// A worker's transaction: its connection, between `BEGIN` and `COMMIT`/`ROLLBACK`.
struct Transaction(Mutex<Option<Connection>>);

/// Opens a connection that waits up to 5 s for another transaction's lock.
fn open(path: &str) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

impl Database {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from the pool, or a new one when all are in use.
    fn acquire(&self) -> rusqlite::Result<Connection> {
        match self.idle().pop() {
            Some(connection) => Ok(connection),
            None => open(&self.path),
        }
    }

    /// Gives a connection back, keeping at most the pool's size.
    fn release(&self, connection: Connection) {
        let mut idle = self.idle();
        if idle.len() < self.size {
            idle.push(connection);
        }
    }

    /// Runs `f` on the current worker's transaction. Outside a worker (a unit test calling a
    /// method directly, without `nameko::testing::run_as_worker`), on a connection of its own,
    /// each statement committed as it runs. A task a worker spawns is inside the worker only if
    /// it is spawned within `WorkerContext::scope`.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let transaction =
            WorkerContext::current().and_then(|worker| worker.local::<Transaction>(self.field));
        match transaction {
            Some(transaction) => {
                let connection = transaction.0.lock().unwrap_or_else(|p| p.into_inner());
                match connection.as_ref() {
                    Some(connection) => f(connection),
                    None => Err(rusqlite::Error::InvalidQuery),
                }
            }
            None => {
                let connection = self.acquire()?;
                let result = f(&connection);
                self.release(connection);
                result
            }
        }
    }

    /// Ends the worker's transaction, on the blocking pool (a commit waits for the disk). A
    /// failed commit is the worker's failure: the caller hears of it.
    async fn finish(&self, worker: &WorkerContext, commit: bool) -> Result<(), Error> {
        let Some(transaction) = worker.remove_local::<Transaction>(self.field) else {
            return Ok(());
        };
        let taken = transaction
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(connection) = taken else {
            return Ok(());
        };
        let statement = if commit { "COMMIT" } else { "ROLLBACK" };
        let ended = tokio::task::spawn_blocking(move || {
            let result = connection.execute_batch(statement);
            (connection, result)
        })
        .await;
        let failure = match ended {
            Ok((connection, Ok(()))) => {
                self.release(connection);
                return Ok(());
            }
            // The connection is dropped: a transaction left open must not go back to the pool.
            Ok((_, Err(error))) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::error!(error = %failure, statement, "could not end a transaction");
        Err(Error::Dependency {
            service: worker.service_name().to_owned(),
            dependency: self.field.to_owned(),
            reason: format!("{statement} failed: {failure}"),
        })
    }
}

impl Dependency for Database {
    async fn build(cx: &DependencyContext, field: &'static str) -> Result<Self, Error> {
        let path = match cx.config().get::<String>("DATABASE_PATH") {
            Some(path) => path?,
            None => std::env::temp_dir()
                .join("nameko-todo.sqlite")
                .display()
                .to_string(),
        };
        let size = cx.config().get::<usize>("DATABASE_POOL_SIZE").transpose()?;
        Ok(Database {
            field,
            path,
            size: size.unwrap_or(4).max(1),
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn start(&self) -> Result<(), Error> {
        let (path, size) = (self.path.clone(), self.size);
        // Opening files and writing the schema block: on the blocking pool.
        let opened = tokio::task::spawn_blocking(move || {
            let first = open(&path)?;
            first.execute_batch(&format!("PRAGMA journal_mode = WAL; {SCHEMA}"))?;
            let mut idle = vec![first];
            for _ in 1..size {
                idle.push(open(&path)?);
            }
            Ok::<_, rusqlite::Error>(idle)
        })
        .await;
        let failed = |e: String| Error::other(format!("database {}: {e}", self.path));
        *self.idle() = opened
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(path = %self.path, connections = self.size, "database pool open");
        Ok(())
    }

    async fn stop(&self) {
        let closed = std::mem::take(&mut *self.idle()).len();
        tracing::info!(path = %self.path, closed, "database pool closed");
    }

    fn kill(&self) {
        self.idle().clear();
    }

    async fn worker_setup(&self, worker: &WorkerContext) -> Result<(), Error> {
        let refused = |reason: String| Error::Dependency {
            service: worker.service_name().to_owned(),
            dependency: self.field.to_owned(),
            reason: format!("could not begin a transaction: {reason}"),
        };
        let idle = self.idle().pop();
        let path = self.path.clone();
        // Opening a connection and `BEGIN IMMEDIATE` (which takes the write lock now, so two
        // transactions never deadlock upgrading to it, and may wait for it) block: on the
        // blocking pool, not on the runtime's threads.
        let begun = tokio::task::spawn_blocking(move || {
            let connection = match idle {
                Some(connection) => connection,
                None => open(&path)?,
            };
            connection.execute_batch("BEGIN IMMEDIATE")?;
            Ok::<_, rusqlite::Error>(connection)
        })
        .await
        .map_err(|e| refused(e.to_string()))?
        .map_err(|e| refused(e.to_string()))?;
        worker.insert_local(self.field, Transaction(Mutex::new(Some(begun))));
        Ok(())
    }

    async fn worker_result(
        &self,
        worker: &WorkerContext,
        result: &WorkerResult<'_>,
    ) -> Result<(), Error> {
        self.finish(worker, result.is_ok()).await
    }

    async fn worker_teardown(&self, worker: &WorkerContext) {
        // Only if `worker_result` did not end it.
        let _ = self.finish(worker, false).await;
    }
}

/// A thing to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    /// Its id.
    pub id: i64,
    /// What to do.
    pub title: String,
}

/// Why a title was refused.
#[derive(Debug)]
pub enum TodoError {
    /// An empty title.
    EmptyTitle,
    /// The database failed.
    Database(rusqlite::Error),
}

impl std::fmt::Display for TodoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TodoError::EmptyTitle => f.write_str("a todo needs a title"),
            TodoError::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl From<rusqlite::Error> for TodoError {
    fn from(error: rusqlite::Error) -> Self {
        TodoError::Database(error)
    }
}

impl ToRemoteError for TodoError {
    fn to_remote_error(&self) -> RemoteError {
        let exc_type = match self {
            TodoError::EmptyTitle => "EmptyTitle",
            TodoError::Database(_) => "DatabaseError",
        };
        RemoteError::new(exc_type, self.to_string())
    }
}

/// A todo list in SQLite.
#[derive(Dependencies)]
pub struct TodoService {
    db: Database,
}

fn insert(db: &Database, title: &str) -> Result<i64, TodoError> {
    if title.trim().is_empty() {
        return Err(TodoError::EmptyTitle);
    }
    Ok(db.with(|tx| {
        tx.execute("INSERT INTO todos (title) VALUES (?1)", [title])?;
        Ok(tx.last_insert_rowid())
    })?)
}

#[service(name = "todo_service")]
impl TodoService {
    /// Adds a todo; returns its id.
    #[rpc(expected_exceptions = "EmptyTitle")]
    pub fn add(&self, title: String) -> Result<i64, TodoError> {
        insert(&self.db, &title)
    }

    /// Adds several todos, all or none.
    #[rpc(expected_exceptions = "EmptyTitle")]
    pub fn add_many(&self, titles: Vec<String>) -> Result<Vec<i64>, TodoError> {
        titles.iter().map(|title| insert(&self.db, title)).collect()
    }

    /// Every todo, oldest first.
    #[rpc]
    pub fn list(&self) -> Result<Vec<Todo>, TodoError> {
        Ok(self.db.with(|tx| {
            let mut statement = tx.prepare("SELECT id, title FROM todos ORDER BY id")?;
            let rows = statement.query_map([], |row| {
                Ok(Todo {
                    id: row.get(0)?,
                    title: row.get(1)?,
                })
            })?;
            rows.collect()
        })?)
    }
}

#[allow(dead_code)] // Tests include this file as a module.
fn main() -> std::process::ExitCode {
    nameko::main()
}
