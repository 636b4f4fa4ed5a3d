//! RPC: the clients ([`ClusterRpcClient`], [`ServiceProxy`]) and the entrypoint ([`Rpc`]).

pub(crate) mod args;
pub mod client;
mod reply;
mod server;

pub use client::{ClusterRpcClient, ServiceProxy};
pub use server::{Dummy, Rpc, RpcConsumer};
