//! The JSON-RPC interface, defined once: `timed` implements the generated server trait and
//! `timectl` calls the generated client. Result types follow Bitcoin Core / Dash field names
//! where those methods exist there; amounts in results are TIME as JSON numbers.

#[cfg(feature = "server")]
use jsonrpsee::core::RpcResult;
#[cfg(any(feature = "server", feature = "client"))]
use jsonrpsee::proc_macros::rpc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Error codes, Bitcoin Core's where one exists.
pub mod codes {
    pub const MISC_ERROR: i32 = -1;
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    pub const WALLET_INSUFFICIENT_FUNDS: i32 = -6;
    pub const INVALID_PARAMETER: i32 = -8;
    /// waittransactionfinality ran out of time.
    pub const TIMEOUT: i32 = -11;
    pub const DESERIALIZATION_ERROR: i32 = -22;
    pub const VERIFY_ERROR: i32 = -25;
    pub const VERIFY_REJECTED: i32 = -26;
    pub const VERIFY_ALREADY_IN_CHAIN: i32 = -27;
    /// A wallet method was called without valid credentials on a non-loopback listener.
    pub const UNAUTHORIZED: i32 = -32001;
}

/// Methods that spend the node's wallet; they need credentials beyond loopback.
pub const WALLET_METHODS: &[&str] = &["sendtoaddress", "mergeutxos", "signrawtransactionwithwallet"];

/// A block named by height (number) or hash (hex string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlockRef {
    Height(u64),
    Hash(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    pub txid: String,
    pub vout: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VinInfo {
    pub txid: String,
    pub vout: u32,
    pub pubkey: String,
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoutInfo {
    pub value: f64,
    pub value_units: u64,
    pub n: u32,
    pub address: String,
}

/// A decoded transaction with where it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxVerbose {
    pub txid: String,
    pub hex: String,
    pub size: usize,
    pub version: u32,
    pub locktime: u64,
    pub memo: Option<String>,
    pub coinbase: bool,
    pub vin: Vec<VinInfo>,
    pub vout: Vec<VoutInfo>,
    pub blockhash: Option<String>,
    pub blockheight: Option<u64>,
    pub confirmations: u64,
    pub blocktime: Option<u64>,
    /// pending, finalized, confirmed, rejected.
    pub finality: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawTransaction {
    Hex(String),
    Verbose(Box<TxVerbose>),
}

/// `gettransaction`: a known transaction with fee and wallet effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransactionInfo {
    #[serde(flatten)]
    pub tx: TxVerbose,
    /// Fee in TIME (absent for coinbase).
    pub fee: Option<f64>,
    /// Net change of this node's wallet, in TIME.
    pub amount: f64,
    /// Unix seconds when this node first saw it.
    pub time: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockVerbose {
    pub hash: String,
    pub height: u64,
    pub confirmations: u64,
    pub version: u32,
    pub previousblockhash: Option<String>,
    pub nextblockhash: Option<String>,
    pub merkleroot: String,
    /// Unix seconds.
    pub time: u64,
    pub time_ms: u64,
    pub slot: u64,
    pub round: u32,
    pub producer: String,
    pub size: usize,
    pub n_tx: usize,
    /// Txids at verbosity 1, decoded transactions at verbosity 2.
    pub tx: Vec<serde_json::Value>,
    /// Validator ids whose precommits finalized this block's parent.
    pub last_commit_signers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlockResult {
    Hex(String),
    Verbose(Box<BlockVerbose>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockchainInfo {
    pub chain: String,
    pub chain_id: String,
    pub blocks: u64,
    pub headers: u64,
    pub bestblockhash: String,
    pub genesishash: String,
    /// Unix seconds of the tip.
    pub time: u64,
    pub block_time_secs: u64,
    pub current_slot: u64,
    pub initialblockdownload: bool,
    pub size_on_disk: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unspent {
    pub txid: String,
    pub vout: u32,
    pub address: String,
    pub amount: f64,
    pub amount_units: u64,
    pub confirmations: u64,
    pub spendable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxOutSetInfo {
    pub height: u64,
    pub bestblock: String,
    pub txouts: u64,
    pub total_amount: f64,
    pub total_units: u64,
    /// SHA-256d over every unspent output in outpoint order: equal on two nodes iff their
    /// UTXO sets are equal at the same tip.
    pub hash_serialized: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub version: u32,
    pub subversion: String,
    pub protocolversion: u32,
    pub chain_id: String,
    pub genesis_hash: String,
    pub validator_id: String,
    pub p2p_listen: String,
    pub connections: usize,
    pub connections_in: usize,
    pub connections_out: usize,
    pub known_addresses: usize,
    pub networkactive: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: u64,
    pub addr: String,
    /// The peer's own listening address, as it announced it.
    pub listen_addr: String,
    pub inbound: bool,
    pub validator_id: String,
    pub bytessent: u64,
    pub bytesrecv: u64,
    /// Seconds, last measured round trip.
    pub pingtime: Option<f64>,
    /// Unix seconds when the connection was made.
    pub conntime: u64,
    pub version: u32,
    pub best_height: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MempoolInfo {
    pub loaded: bool,
    /// Transactions waiting for finality or for a block.
    pub size: usize,
    /// Sum of their serialized sizes.
    pub bytes: usize,
    /// Estimated memory used by the pool.
    pub usage: usize,
    pub maxmempool: usize,
    pub mempoolminfee: f64,
    pub pending: usize,
    pub finalized: usize,
    pub conflicts: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MempoolEntry {
    pub size: usize,
    pub fee: f64,
    /// Unix seconds when it entered the pool.
    pub time: u64,
    pub finality: String,
    pub depends: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawMempool {
    Verbose(BTreeMap<String, MempoolEntry>),
    Txids(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasternodeEntry {
    pub id: String,
    pub index: u16,
    pub pubkey: String,
    pub tier: String,
    pub collateral: f64,
    pub reward_address: String,
    /// active or inactive, from heartbeats (three missed intervals: inactive).
    pub status: String,
    /// Whether the chain's commit record makes it eligible to lead a slot.
    pub leader_eligible: bool,
    pub connected: bool,
    pub last_heartbeat_seq: Option<u64>,
    /// Unix seconds of the last heartbeat seen.
    pub last_heartbeat: Option<u64>,
    pub verified_heartbeats: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasternodeStatus {
    pub id: String,
    pub index: u16,
    pub pubkey: String,
    pub tier: String,
    pub reward_address: String,
    pub wallet_address: String,
    pub status: String,
    pub heartbeat_seq: u64,
    pub verified_heartbeats: u64,
    pub blocks_produced: u64,
    pub height: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsensusInfo {
    pub mode: String,
    pub height: u64,
    pub round: u32,
    pub step: String,
    pub current_slot: u64,
    pub slot_leader: Option<String>,
    pub block_time_secs: u64,
    pub propose_timeout_ms: u64,
    pub validators: usize,
    pub active_validators: usize,
    pub quorum: usize,
    pub last_block_time: u64,
    pub blocks_committed: u64,
    pub rounds_timed_out: u64,
    pub avalanche: AvalancheStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvalancheStatus {
    pub k: usize,
    pub alpha_preference: usize,
    pub alpha_confidence: usize,
    pub beta: u32,
    pub poll_interval_ms: u64,
    pub max_concurrent_polls: usize,
    pub sampleable_validators: usize,
    pub undecided: usize,
    pub conflict_sets: usize,
    pub polls_sent: u64,
    pub polls_failed: u64,
    pub queries_answered: u64,
    pub finalized_total: u64,
    pub rejected_total: u64,
    pub expired_total: u64,
    /// Milliseconds, over the last finalized transactions.
    pub finality_ms_p50: Option<u64>,
    pub finality_ms_p99: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressValidation {
    pub isvalid: bool,
    pub address: Option<String>,
    pub network: Option<String>,
    pub ismine: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttestationStats {
    pub heartbeat_interval_secs: u64,
    pub min_witnesses: usize,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub attestations_given: u64,
    pub attestations_received: u64,
    pub invalid_rejected: u64,
    pub verified_heartbeats: u64,
    pub per_validator: Vec<ValidatorAttestation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidatorAttestation {
    pub id: String,
    pub last_seq: Option<u64>,
    pub verified: u64,
    pub unverified: u64,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    pub validator_id: String,
    pub sequence: u64,
    /// Unix milliseconds as signed by the sender.
    pub timestamp_ms: u64,
    pub witnesses: Vec<String>,
    pub verified: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxFinality {
    pub txid: String,
    /// unknown, pending, finalized, confirmed, rejected.
    pub status: String,
    /// True once Avalanche accepted it (and so for every later state but rejected).
    pub finalized: bool,
    pub confidence: u32,
    pub blockhash: Option<String>,
    pub blockheight: Option<u64>,
    /// Milliseconds from first seen to finalized, when this node saw both.
    pub finality_ms: Option<u64>,
    /// Unix milliseconds at which this node made it final, while it remembers (recent ones).
    #[serde(default)]
    pub finalized_at_ms: Option<u64>,
    /// Why it was rejected (`txn-expired`, `txn-mempool-conflict`, ...), when status is rejected.
    #[serde(default)]
    pub reject_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignResult {
    pub hex: String,
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeResult {
    pub txid: Option<String>,
    pub merged: usize,
    pub amount: f64,
}

#[cfg_attr(all(feature = "server", feature = "client"), rpc(server, client))]
#[cfg_attr(all(feature = "server", not(feature = "client")), rpc(server))]
#[cfg_attr(all(feature = "client", not(feature = "server")), rpc(client))]
pub trait TimeRpc {
    /// Submits a signed transaction (hex); returns its txid.
    #[method(name = "sendrawtransaction")]
    async fn send_raw_transaction(&self, hexstring: String) -> RpcResult<String>;

    #[method(name = "getrawtransaction")]
    async fn get_raw_transaction(&self, txid: String, verbose: Option<bool>) -> RpcResult<RawTransaction>;

    #[method(name = "gettransaction")]
    async fn get_transaction(&self, txid: String) -> RpcResult<TransactionInfo>;

    /// Builds an unsigned transaction; `outputs` maps address to TIME.
    #[method(name = "createrawtransaction")]
    async fn create_raw_transaction(
        &self,
        inputs: Vec<InputRef>,
        outputs: BTreeMap<String, f64>,
        locktime: Option<u64>,
        memo: Option<String>,
    ) -> RpcResult<String>;

    #[method(name = "signrawtransactionwithwallet")]
    async fn sign_raw_transaction_with_wallet(&self, hexstring: String) -> RpcResult<SignResult>;

    #[method(name = "sendtoaddress")]
    async fn send_to_address(&self, address: String, amount: f64, memo: Option<String>) -> RpcResult<String>;

    /// Spends many small wallet outputs into one.
    #[method(name = "mergeutxos")]
    async fn merge_utxos(&self, min_count: Option<usize>, max_count: Option<usize>) -> RpcResult<MergeResult>;

    #[method(name = "getblock")]
    async fn get_block(&self, blockref: BlockRef, verbosity: Option<u8>) -> RpcResult<BlockResult>;

    #[method(name = "getblockhash")]
    async fn get_block_hash(&self, height: u64) -> RpcResult<String>;

    #[method(name = "getbestblockhash")]
    async fn get_best_block_hash(&self) -> RpcResult<String>;

    #[method(name = "getblockcount")]
    async fn get_block_count(&self) -> RpcResult<u64>;

    #[method(name = "getblockchaininfo")]
    async fn get_blockchain_info(&self) -> RpcResult<BlockchainInfo>;

    /// Balance of `address`, or of this node's wallet when none is given.
    #[method(name = "getbalance")]
    async fn get_balance(&self, address: Option<String>, minconf: Option<u64>) -> RpcResult<f64>;

    #[method(name = "listunspent")]
    async fn list_unspent(
        &self,
        minconf: Option<u64>,
        maxconf: Option<u64>,
        addresses: Option<Vec<String>>,
    ) -> RpcResult<Vec<Unspent>>;

    #[method(name = "gettxoutsetinfo")]
    async fn get_txout_set_info(&self) -> RpcResult<TxOutSetInfo>;

    #[method(name = "getnetworkinfo")]
    async fn get_network_info(&self) -> RpcResult<NetworkInfo>;

    #[method(name = "getpeerinfo")]
    async fn get_peer_info(&self) -> RpcResult<Vec<PeerInfo>>;

    /// Seconds since the node started.
    #[method(name = "uptime")]
    async fn uptime(&self) -> RpcResult<u64>;

    #[method(name = "getmempoolinfo")]
    async fn get_mempool_info(&self) -> RpcResult<MempoolInfo>;

    #[method(name = "getrawmempool")]
    async fn get_raw_mempool(&self, verbose: Option<bool>) -> RpcResult<RawMempool>;

    #[method(name = "masternodelist")]
    async fn masternode_list(&self) -> RpcResult<Vec<MasternodeEntry>>;

    #[method(name = "masternodestatus")]
    async fn masternode_status(&self) -> RpcResult<MasternodeStatus>;

    #[method(name = "getconsensusinfo")]
    async fn get_consensus_info(&self) -> RpcResult<ConsensusInfo>;

    #[method(name = "getavalanchestatus")]
    async fn get_avalanche_status(&self) -> RpcResult<AvalancheStatus>;

    #[method(name = "validateaddress")]
    async fn validate_address(&self, address: String) -> RpcResult<AddressValidation>;

    #[method(name = "getattestationstats")]
    async fn get_attestation_stats(&self) -> RpcResult<AttestationStats>;

    #[method(name = "getheartbeathistory")]
    async fn get_heartbeat_history(
        &self,
        validator_id: Option<String>,
        count: Option<usize>,
    ) -> RpcResult<Vec<HeartbeatRecord>>;

    #[method(name = "gettransactionfinality")]
    async fn get_transaction_finality(&self, txid: String) -> RpcResult<TxFinality>;

    /// Waits until the transaction is finalized (or rejected); error -11 after `timeout` seconds.
    #[method(name = "waittransactionfinality")]
    async fn wait_transaction_finality(&self, txid: String, timeout: Option<f64>) -> RpcResult<TxFinality>;
}

/// Every method the server registers, for documentation checks and `timectl` completion.
pub const METHODS: &[&str] = &[
    "sendrawtransaction",
    "getrawtransaction",
    "gettransaction",
    "createrawtransaction",
    "signrawtransactionwithwallet",
    "sendtoaddress",
    "mergeutxos",
    "getblock",
    "getblockhash",
    "getbestblockhash",
    "getblockcount",
    "getblockchaininfo",
    "getbalance",
    "listunspent",
    "gettxoutsetinfo",
    "getnetworkinfo",
    "getpeerinfo",
    "uptime",
    "getmempoolinfo",
    "getrawmempool",
    "masternodelist",
    "masternodestatus",
    "getconsensusinfo",
    "getavalanchestatus",
    "validateaddress",
    "getattestationstats",
    "getheartbeathistory",
    "gettransactionfinality",
    "waittransactionfinality",
];
