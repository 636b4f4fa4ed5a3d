//! RPC: argument binding for the server side and the clients.

pub mod args;
pub mod client;

pub use client::{ClusterRpcClient, ServiceProxy};
