//! Consensus: Snowball finality for transactions, Tendermint-style agreement on TSDC blocks,
//! deterministic slot leaders and masternode heartbeats.

pub mod bft;
pub mod heartbeat;
pub mod leader;
pub mod snowball;
