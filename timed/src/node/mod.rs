//! Node wiring: opens the store, loads keys, starts P2P, the consensus engine and the RPC
//! server, and shuts them down in order. Shared state lives in [`Shared`]; the engine task is
//! the only writer of consensus state, RPC handlers read it and submit transactions.

pub mod engine;
pub mod ledger;

use crate::chain::genesis::{devnet_validator_key, devnet_wallet_key};
use crate::chain::validate::TxError;
use crate::chain::{Keypair, Transaction, Txid, ValidatorIndex};
use crate::config::NodeConfig;
use crate::consensus::heartbeat::HeartbeatTracker;
use crate::consensus::snowball::Snowball;
use crate::mempool::{Added, Mempool, DEFAULT_MAX_BYTES};
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
use tokio::sync::{mpsc, watch, Notify};

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

/// Mutable node state behind one lock. Never held across an await.
pub struct State {
    pub mempool: Mempool,
    pub snowball: Snowball,
    pub heartbeats: HeartbeatTracker,
    pub view: ConsensusView,
    pub counters: Counters,
    /// Finality latencies (ms) of recent transactions, newest last.
    pub recent_finality_ms: VecDeque<u64>,
    /// Finality latency by txid for recently finalized transactions.
    pub finality_ms: std::collections::HashMap<Txid, u64>,
    pub heartbeat_seq: u64,
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
    /// Woken whenever a transaction is finalized, rejected or included in a block.
    pub finality_changed: Notify,
    pub tip: watch::Sender<u64>,
    /// Transactions the engine should start polling (and gossip).
    pub new_txs: mpsc::UnboundedSender<Txid>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn chain_id(&self) -> &str {
        self.ledger.chain_id()
    }

    /// Validates a transaction into the mempool and Snowball. Returns its txid; gossip and
    /// polling are the engine's job (it is told through `new_txs`).
    pub fn submit_tx(&self, tx: Transaction) -> Result<(Txid, Added), TxError> {
        let txid = tx.txid();
        let in_chain = self.ledger.store.tx_location(&txid).map(|l| l.is_some()).unwrap_or(false);
        let (tip, _) = self.ledger.store.tip().map_err(|_| TxError::MissingInputs)?;
        let inputs: Vec<_> = tx.inputs.iter().map(|i| i.prevout).collect();
        let added = {
            let mut st = self.state();
            let (txid, added) = st.mempool.add(
                tx,
                self.ledger.store.as_ref(),
                in_chain,
                self.chain_id(),
                self.ledger.genesis.network_byte(),
                tip + 1,
                now_ms(),
            )?;
            if added != Added::Known
                && st.snowball.insert(txid, &inputs, Instant::now())
                    == crate::consensus::snowball::InsertOutcome::Rejected
            {
                // It spends what an accepted transaction spends, or a rejected one's output.
                st.mempool.reject(&txid, TxError::ConflictFinalized);
                return Err(TxError::ConflictFinalized);
            }
            added
        };
        if added != Added::Known {
            let _ = self.new_txs.send(txid);
        }
        Ok((txid, added))
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
    let (p2p, inbound) = P2p::start(
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
        // Sequence numbers must grow across restarts, or peers ignore us as a replay.
        heartbeat_seq: now_ms(),
    };
    let metrics = Arc::new(Metrics::new());
    let (new_tx_send, new_tx_recv) = mpsc::unbounded_channel();
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
        state: Mutex::new(state),
        finality_changed: Notify::new(),
        tip: tip_tx,
        new_txs: new_tx_send,
    });
    engine::restore_finalized(&shared)?;
    let rpc = crate::rpc::serve(shared.clone(), rpc_listener).await?;
    write_node_file(&shared)?;
    tracing::info!(rpc = %rpc_addr, p2p = %p2p.local_addr(), "node ready");
    // Only now: systemd starts whatever is ordered after timed once it sees READY=1.
    crate::notify::notify_or_log(crate::notify::READY);

    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = tokio::spawn(engine::run(shared.clone(), inbound, new_tx_recv, stop_rx));
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
