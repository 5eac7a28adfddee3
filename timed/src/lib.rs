//! `timed`: a TIME Coin validator node, as a library. The binary in `main.rs` only parses
//! flags and calls [`node::run`]. `timectl` uses the chain types and the RPC client from here.

pub mod api;
pub mod chain;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod consensus;
#[cfg(feature = "server")]
pub mod mempool;
#[cfg(feature = "server")]
pub mod metrics;
pub mod metrics_names;
#[cfg(feature = "server")]
pub mod node;
pub mod node_info;
#[cfg(feature = "server")]
pub mod notify;
#[cfg(feature = "server")]
pub mod p2p;
#[cfg(feature = "server")]
pub mod rpc;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "server")]
pub mod wallet;
