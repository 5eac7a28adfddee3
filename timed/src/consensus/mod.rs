//! Consensus: Snowball finality for transactions, Tendermint-style agreement on TSDC blocks,
//! deterministic slot leaders and masternode heartbeats.
