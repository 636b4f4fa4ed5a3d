#![doc = include_str!("../../docs/testing.md")]

mod broker;
mod services;
mod worker;

pub use crate::service::hooks::{
    DEFAULT_TIMEOUT, EntrypointHook, EntrypointWaiter, FinishedWorker, WaitError,
};
pub use broker::TestBroker;
pub use services::{TestCluster, TestServices};
pub use worker::{WorkerFactory, run_as_worker, worker_factory};
