//! Consensus: Snowball finality for transactions, Tendermint-style agreement on TSDC blocks,
//! deterministic slot leaders and masternode heartbeats, and the signed messages they exchange
//! (`messages`; the wire envelope is `p2p::message`).

pub mod bft;
pub mod heartbeat;
pub mod leader;
pub mod messages;
pub mod snowball;
