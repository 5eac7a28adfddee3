//! Node wiring: opens the store, loads keys, starts P2P, the consensus engine and the RPC
//! server, and shuts them down in order. Shared state lives in [`Shared`]; the engine task is
//! the only writer of consensus state, the mempool and Snowball; RPC handlers read it and hand
//! transactions to the engine ([`Submission`]).

pub mod engine;
pub mod ledger;

use crate::chain::genesis::{devnet_validator_key, devnet_wallet_key};
use crate::chain::validate::{signatures_valid_identified, TxError};
use crate::chain::{IdentifiedTx, Keypair, Transaction, Txid, ValidatorIndex};
use crate::config::NodeConfig;
use crate::consensus::heartbeat::HeartbeatTracker;
use crate::consensus::snowball::Snowball;
use crate::mempool::{Added, Mempool, PendingCount, DEFAULT_MAX_BYTES};
use crate::metrics::Metrics;
use crate::node_info::NodeInfo;
use crate::p2p::message::Message;
use crate::p2p::{P2p, P2pConfig};
use crate::storage::Store;
use crate::wallet::{load_or_create_key, Wallet};
use anyhow::Context;
use ledger::Ledger;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch, Notify};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the engine reports about block agreement, for getconsensusinfo.
#[derive(Clone, Debug, Default)]
pub struct ConsensusView {
    pub height: u64,
    pub round: u32,
    pub step: String,
    pub slot: u64,
    pub leader: Option<ValidatorIndex>,
    pub rounds_timed_out: u64,
    pub blocks_committed: u64,
    pub blocks_produced: u64,
    pub last_block_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub polls_sent: u64,
    pub polls_failed: u64,
    pub queries_answered: u64,
    pub heartbeats_sent: u64,
    pub attestations_given: u64,
    pub invalid_rejected: u64,
}

/// Peers may fill the pending set to this multiple of `--max-pending-txs`: what one validator
/// admitted reaches the others even when all are near the limit; the hard bound keeps memory
/// bounded under any load.
pub const PEER_PENDING_FACTOR: usize = 3;

/// How many recently finalized transactions keep their finality times for RPC.
pub const FINALITY_MEMORY: usize = 200_000;
/// And for how long at most (so the memory is given back once a burst is over).
pub const FINALITY_KEEP_MS: u64 = 120_000;

/// Sets the allocator up for a node; call before any thread starts. Allocations of 64 KiB and
/// more (frames, blocks, large map tables) get mappings of their own, given back when freed.
/// glibc's default threshold rises with the largest block freed, so in a burst those landed in
/// the heap, and what stayed allocated among them kept a node at 2x of its idle RSS after the
/// load (docs/benchmarks.md, run AF).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// When a transaction became final on this node.
#[derive(Clone, Copy, Debug)]
pub struct FinalityTime {
    /// From first seen here to final.
    pub latency_ms: u64,
    /// Unix milliseconds of finality.
    pub at_ms: u64,
}

/// Mutable node state behind one lock. Never held across an await. Only the engine task
/// writes the mempool and Snowball; everyone else reads.
pub struct State {
    pub mempool: Mempool,
    pub snowball: Snowball,
    pub heartbeats: HeartbeatTracker,
    pub view: ConsensusView,
    pub counters: Counters,
    /// Finality latencies (ms) of recent transactions, newest last.
    pub recent_finality_ms: VecDeque<u64>,
    /// Finality latency and unix time of finality, by txid, for recently finalized
    /// transactions (oldest dropped first past `FINALITY_MEMORY`).
    pub finality_ms: foldhash::HashMap<Txid, FinalityTime>,
    pub finality_order: VecDeque<Txid>,
    pub heartbeat_seq: u64,
}

impl State {
    /// Records when `txid` became final here (by a poll or by a committed block), unless that
    /// is known already. Oldest first past `FINALITY_MEMORY`, so a client asking soon after
    /// finality still gets its answer under sustained load.
    pub fn remember_finality(&mut self, txid: Txid, time: FinalityTime) {
        if self.finality_ms.contains_key(&txid) {
            return;
        }
        while self.finality_order.len() >= FINALITY_MEMORY {
            if let Some(old) = self.finality_order.pop_front() {
                self.finality_ms.remove(&old);
            }
        }
        self.finality_ms.insert(txid, time);
        self.finality_order.push_back(txid);
    }
}

pub struct Shared {
    pub cfg: NodeConfig,
    pub ledger: Ledger,
    pub me: ValidatorIndex,
    pub key: Keypair,
    pub wallet: Wallet,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub p2p: P2p,
    pub rpc_addr: SocketAddr,
    state: Mutex<State>,
    /// The mempool's pending count, read without the state lock ([`Shared::refusing_clients`]).
    pending: PendingCount,
    /// Woken whenever a transaction is finalized, rejected or included in a block.
    pub finality_changed: Notify,
    pub tip: watch::Sender<u64>,
    /// Client transactions on their way to the engine, the only writer of the mempool and
    /// Snowball. Bounded: when the engine falls behind, RPC handlers wait here.
    pub submit: mpsc::Sender<Submission>,
}

/// How many client transactions may wait for the engine before RPC handlers wait too.
pub const SUBMIT_QUEUE: usize = 4096;

/// A client transaction whose signatures were already checked (`signatures_ok` is the verdict
/// of `signatures_valid` on this exact transaction), with where to send the engine's answer.
///
/// Why one writer: before, RPC handlers wrote the mempool and Snowball under the state lock
/// while the engine wrote them too, and the engine then read each transaction back out of the
/// pool to gossip it. Now a transaction goes one way, RPC or gossip -> engine; the engine
/// admits, relays and polls it in the order it arrived, and readers only read.
pub struct Submission {
    pub tx: IdentifiedTx,
    pub signatures_ok: bool,
    pub reply: oneshot::Sender<Result<(Txid, Added), TxError>>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn chain_id(&self) -> &str {
        self.ledger.chain_id()
    }

    /// Adds `tx` to `pool` against this node's chain (its store, chain id and network), for
    /// a block at `next_height`. The one place that fills in what every pool admission shares.
    pub(crate) fn pool_add(
        &self,
        pool: &mut Mempool,
        tx: crate::chain::IdentifiedTx,
        sigs: crate::chain::validate::Signatures,
        in_chain: &dyn Fn() -> bool,
        next_height: u64,
        at_ms: u64,
    ) -> Result<(Txid, Added), TxError> {
        let network = self.ledger.genesis.network_byte();
        pool.add_with(tx, sigs, self.ledger.store.as_ref(), in_chain, self.chain_id(), network, next_height, at_ms)
    }

    /// Hands a transaction from a client (RPC: `sendrawtransaction`, wallet sends) to the
    /// engine and waits for its verdict. The cheap refusals (known, refused before, pool full)
    /// and the signature check happen here, in the RPC task, so overload costs the engine
    /// nothing and handlers verify in parallel; the engine alone then validates against the
    /// UTXO set and writes the mempool and Snowball (see [`Submission`]).
    pub async fn submit_tx(&self, tx: Transaction) -> Result<(Txid, Added), TxError> {
        let tx = IdentifiedTx::new(tx);
        if let Some(answer) = self.precheck(&tx.txid(), self.cfg.max_pending_txs) {
            return answer;
        }
        let signatures_ok = signatures_valid_identified(&tx, self.chain_id());
        let (reply, answer) = oneshot::channel();
        // A full queue waits (the engine drains it in order); a closed one means the node is
        // stopping: the client is told to try again, as for a full pool.
        if self.submit.send(Submission { tx, signatures_ok, reply }).await.is_err() {
            return Err(TxError::MempoolFull);
        }
        answer.await.unwrap_or(Err(TxError::MempoolFull))
    }

    /// Whether clients are refused `mempool-full` now (the last rule of [`Shared::precheck`]),
    /// read without the state lock. Under overload nearly every submission ends there, so
    /// `sendrawtransaction` asks this before it decodes and hashes anything; the price is that
    /// a pooled transaction sent again meanwhile is also told to back off, not given its txid.
    pub fn refusing_clients(&self) -> bool {
        self.pending.get() >= self.cfg.max_pending_txs
    }

    /// The answers that need no signature check and no write, read under the state lock:
    /// `Some` when the transaction is already pooled, was refused before, or the pool holds
    /// `pending_limit` undecided transactions. The engine asks again before it writes.
    pub fn precheck(&self, txid: &Txid, pending_limit: usize) -> Option<Result<(Txid, Added), TxError>> {
        let st = self.state();
        if st.mempool.contains(txid) {
            return Some(Ok((*txid, Added::Known)));
        }
        if let Some(reason) = st.mempool.rejection(txid) {
            return Some(Err(reason.clone()));
        }
        if st.mempool.pending_count() >= pending_limit {
            return Some(Err(TxError::MempoolFull));
        }
        None
    }

    pub fn broadcast(&self, msg: Message) {
        self.p2p.broadcast(msg);
    }
}

/// Runs a node until `shutdown` resolves. Returns after everything is closed.
pub async fn run(cfg: NodeConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let genesis = cfg.genesis.clone();
    let me = genesis.validator_index(&cfg.validator_id).context("validator is not in the genesis")?;
    let devnet = cfg.is_devnet();
    let id = cfg.validator_id.clone();
    let key = load_or_create_key(&cfg.data_dir.join("validator.key"), || {
        if devnet {
            devnet_validator_key(&id)
        } else {
            Keypair::generate()
        }
    })?;
    if key.public() != genesis.validators[me as usize].pubkey {
        anyhow::bail!(
            "the validator key in {} (public key {}) is not the key the genesis lists for {} ({})",
            cfg.data_dir.join("validator.key").display(),
            key.public().to_hex(),
            cfg.validator_id,
            genesis.validators[me as usize].pubkey.to_hex()
        );
    }
    let wallet_key = load_or_create_key(&cfg.data_dir.join("wallet.key"), || {
        if devnet {
            devnet_wallet_key(&id)
        } else {
            Keypair::generate()
        }
    })?;
    let wallet = Wallet::new(wallet_key, genesis.network);
    let store = Arc::new(
        Store::open(&cfg.data_dir.join("chain.redb"), &genesis)
            .with_context(|| format!("cannot open the chain store in {}", cfg.data_dir.display()))?,
    );
    let (tip_height, tip_hash) = store.tip()?;
    tracing::info!(
        validator = %cfg.validator_id,
        chain = %genesis.chain_id,
        genesis = %genesis.genesis_hash(),
        height = tip_height,
        tip = %tip_hash,
        "store opened"
    );
    if devnet {
        tracing::warn!(
            "devnet genesis: every key is derived from its validator id and is public; never hold value on it"
        );
    }

    let (tip_tx, tip_rx) = watch::channel(tip_height);
    let tuning = crate::p2p::Tuning {
        handshake_timeout: cfg.p2p_limits.handshake_timeout,
        max_pending: cfg.p2p_limits.max_pending,
        max_pending_per_ip: cfg.p2p_limits.max_pending_per_ip,
        ..Default::default()
    };
    let (p2p, inbound) = P2p::start_tuned(
        P2pConfig {
            listen: cfg.p2p_listen,
            seeds: cfg.peers.clone(),
            identity: key.clone(),
            validator_index: me,
            validator_id: cfg.validator_id.clone(),
            chain_id: genesis.chain_id.clone(),
            genesis_hash: genesis.genesis_hash(),
            validators: genesis.validators.iter().map(|v| (v.id.clone(), v.pubkey)).collect(),
            user_agent: format!("/timed:{}/", env!("CARGO_PKG_VERSION")),
        },
        tuning,
        tip_rx,
    )
    .await
    .with_context(|| format!("cannot start P2P on {}", cfg.p2p_listen))?;

    let n = genesis.validators.len();
    let state = State {
        mempool: Mempool::new(DEFAULT_MAX_BYTES),
        snowball: Snowball::new(cfg.avalanche.clone()),
        heartbeats: HeartbeatTracker::new(n, cfg.heartbeat_ms, 3.min(n.saturating_sub(1)), 100),
        view: ConsensusView::default(),
        counters: Counters::default(),
        recent_finality_ms: VecDeque::new(),
        finality_ms: Default::default(),
        finality_order: VecDeque::new(),
        // Sequence numbers must grow across restarts, or peers ignore us as a replay.
        heartbeat_seq: now_ms(),
    };
    let metrics = Arc::new(Metrics::new());
    let (submit_send, submit_recv) = mpsc::channel(SUBMIT_QUEUE);
    let ledger = Ledger::new(store.clone(), genesis);

    // The RPC server needs `Shared`, and `Shared` records the RPC address: bind first.
    let rpc_listener = crate::rpc::bind(cfg.rpc_bind).await?;
    let rpc_addr = rpc_listener.local_addr()?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        ledger,
        me,
        key,
        wallet,
        metrics,
        started: Instant::now(),
        p2p: p2p.clone(),
        rpc_addr,
        pending: state.mempool.pending_counter(),
        state: Mutex::new(state),
        finality_changed: Notify::new(),
        tip: tip_tx,
        submit: submit_send,
    });
    p2p.set_poll_answerer(Arc::new(engine::Answerer(Arc::downgrade(&shared))));
    engine::restore_finalized(&shared)?;
    let rpc = crate::rpc::serve(shared.clone(), rpc_listener).await?;
    write_node_file(&shared)?;
    tracing::info!(rpc = %rpc_addr, p2p = %p2p.local_addr(), "node ready");
    // Only now: systemd starts whatever is ordered after timed once it sees READY=1.
    crate::notify::notify_or_log(crate::notify::READY);

    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = tokio::spawn(engine::run(shared.clone(), inbound, submit_recv, stop_rx));
    shutdown.await;
    crate::notify::notify_or_log(crate::notify::STOPPING);
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = rpc.stop();
    rpc.stopped().await;
    match engine.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("engine stopped with an error: {e:#}"),
        Err(e) => tracing::error!("engine task failed: {e}"),
    }
    p2p.shutdown();
    if let Err(e) = NodeInfo::remove(&cfg.data_dir) {
        tracing::warn!("{e:#}");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `node.json` in the data dir tells tools (timectl) where this node listens.
fn write_node_file(shared: &Shared) -> anyhow::Result<()> {
    let info = NodeInfo {
        pid: std::process::id(),
        validator_id: shared.cfg.validator_id.clone(),
        p2p: shared.p2p.local_addr(),
        rpc: shared.rpc_addr,
        genesis_hash: shared.ledger.genesis_hash.to_hex(),
        chain_id: shared.chain_id().to_string(),
    };
    info.write(&shared.cfg.data_dir)?;
    Ok(())
}

/// `timed keygen`: creates (or shows) random validator and wallet keys in `dir` and prints
/// the lines a genesis file needs for this validator. Never devnet keys.
pub fn keygen(dir: &std::path::Path, validator_id: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let key = load_or_create_key(&dir.join("validator.key"), Keypair::generate)?;
    let wallet = load_or_create_key(&dir.join("wallet.key"), Keypair::generate)?;
    let address = crate::chain::Address::from_pubkey(crate::chain::Network::Testnet, &wallet.public());
    println!("[[validators]]");
    println!("id = {validator_id:?}");
    println!("pubkey = {:?}", key.public().to_hex());
    println!("tier = \"free\"");
    println!("reward_address = {:?}", address.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Hash256;

    fn state() -> State {
        State {
            mempool: Mempool::new(DEFAULT_MAX_BYTES),
            snowball: Snowball::new(Default::default()),
            heartbeats: HeartbeatTracker::new(3, 1000, 2, 100),
            view: ConsensusView::default(),
            counters: Counters::default(),
            recent_finality_ms: VecDeque::new(),
            finality_ms: Default::default(),
            finality_order: VecDeque::new(),
            heartbeat_seq: 0,
        }
    }

    #[test]
    fn the_first_finality_time_stays_and_the_oldest_goes_first() {
        let mut st = state();
        let id = |i: u32| Hash256::digest(&i.to_be_bytes());
        st.remember_finality(id(0), FinalityTime { latency_ms: 5, at_ms: 100 });
        // A block committing it later does not move the time its polls made it final.
        st.remember_finality(id(0), FinalityTime { latency_ms: 900, at_ms: 1000 });
        assert_eq!(st.finality_ms[&id(0)].at_ms, 100);
        for i in 1..=FINALITY_MEMORY as u32 {
            st.remember_finality(id(i), FinalityTime { latency_ms: 1, at_ms: 200 + u64::from(i) });
        }
        assert_eq!(st.finality_ms.len(), FINALITY_MEMORY);
        assert_eq!(st.finality_order.len(), FINALITY_MEMORY);
        assert!(!st.finality_ms.contains_key(&id(0)), "the oldest is forgotten first");
        assert!(st.finality_ms.contains_key(&id(1)) && st.finality_ms.contains_key(&id(FINALITY_MEMORY as u32)));
    }
}
