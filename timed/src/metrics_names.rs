//! Names of the Prometheus metrics every node serves at `/metrics` on its RPC port. Shared so
//! that `timectl resources` reads exactly what `timed` writes.

/// Standard process collector names.
pub const PROCESS_RSS_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

pub const P2P_BYTES_SENT: &str = "timed_p2p_bytes_sent_total";
pub const P2P_BYTES_RECEIVED: &str = "timed_p2p_bytes_received_total";
/// P2P frames, labelled by `direction` (sent, received) and message `kind`.
pub const P2P_MESSAGES: &str = "timed_p2p_messages_total";
/// P2P bytes, labelled like [`P2P_MESSAGES`]; they add up to the two totals above, but for a
/// received frame that does not decode (its connection is then closed).
pub const P2P_MESSAGE_BYTES: &str = "timed_p2p_message_bytes_total";
pub const PEERS: &str = "timed_peers";
pub const BLOCK_HEIGHT: &str = "timed_block_height";
/// Histogram of seconds between consecutive committed blocks.
pub const BLOCK_INTERVAL: &str = "timed_block_interval_seconds";
/// Histogram of seconds from first sight of a transaction to its finality.
pub const TX_FINALITY: &str = "timed_tx_finality_seconds";
/// Histogram of RPC handling time, labelled by method.
pub const RPC_DURATION: &str = "timed_rpc_request_duration_seconds";
pub const MEMPOOL_SIZE: &str = "timed_mempool_size";
pub const TX_FINALIZED: &str = "timed_tx_finalized_total";
pub const TX_REJECTED: &str = "timed_tx_rejected_total";
/// Seconds the consensus engine task spent, labelled by `stage` (the kind of work).
pub const ENGINE_BUSY: &str = "timed_engine_busy_seconds_total";
/// Events the consensus engine task handled, labelled by `stage`.
pub const ENGINE_EVENTS: &str = "timed_engine_events_total";
/// Histogram of seconds from sending a Snowball poll to its last answer.
pub const POLL_ROUND_TRIP: &str = "timed_poll_round_trip_seconds";
/// Txids asked about in the Snowball polls a node sent.
pub const POLL_TXIDS: &str = "timed_poll_txids_total";
