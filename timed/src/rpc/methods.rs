//! The RPC methods over the node's state. Reads go straight to the store and the state lock;
//! submissions go through [`Shared::submit_tx`] to the engine, like gossip does.

use crate::api::*;
use crate::chain::amount::{from_time, min_fee, to_time};
use crate::chain::validate::TxError;
use crate::chain::{Address, Block, Hash256, OutPoint, Transaction, TxOut, Txid};
use crate::mempool::TxStatus;
use crate::node::engine::latency_percentiles;
use crate::node::{now_ms, Shared};
use jsonrpsee::core::{async_trait, RpcResult};
use jsonrpsee::types::ErrorObjectOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct RpcImpl {
    pub s: Arc<Shared>,
    /// Held from coin selection until the engine has answered for the spend: two concurrent
    /// wallet calls would otherwise pick the same coins and one would be refused as a double
    /// spend though the wallet had others.
    pub wallet_spend: tokio::sync::Mutex<()>,
}

fn err(code: i32, msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, msg.into(), None::<()>)
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    err(codes::MISC_ERROR, format!("internal error: {e}"))
}

fn tx_err(e: TxError) -> ErrorObjectOwned {
    err(e.rpc_code(), e.to_string())
}

fn parse_txid(s: &str) -> RpcResult<Txid> {
    Hash256::from_hex(s).ok_or_else(|| err(codes::INVALID_PARAMETER, "txid must be 64 hex characters"))
}

fn parse_address(s: &str, shared: &Shared) -> RpcResult<Address> {
    let a = Address::parse(s).map_err(|e| err(codes::INVALID_ADDRESS_OR_KEY, format!("invalid address: {e}")))?;
    if a.network() != shared.ledger.genesis.network {
        return Err(err(codes::INVALID_ADDRESS_OR_KEY, "address is for another network"));
    }
    Ok(a)
}

fn amount_units(v: f64) -> RpcResult<u64> {
    from_time(v)
        .filter(|u| *u > 0)
        .ok_or_else(|| err(codes::INVALID_PARAMETER, "amount must be a positive number of TIME"))
}

fn unspent(op: &OutPoint, o: &TxOut, confirmations: u64, spendable: bool) -> Unspent {
    Unspent {
        txid: op.txid.to_hex(),
        vout: op.vout,
        address: o.address.to_string(),
        amount: to_time(o.value),
        amount_units: o.value,
        confirmations,
        spendable,
    }
}

/// Where a transaction stands on this node.
enum Found {
    Chain { tx: Transaction, height: u64, block: Arc<Block> },
    Pool { tx: Transaction, finalized: bool, first_seen_ms: u64, fee: u64 },
}

impl RpcImpl {
    fn find_tx(&self, txid: &Txid) -> RpcResult<Option<Found>> {
        if let Some((tx, block)) = self.s.ledger.store.get_tx_in_block(txid).map_err(internal)? {
            return Ok(Some(Found::Chain { tx, height: block.height(), block: Arc::new(block) }));
        }
        let st = self.s.state();
        Ok(st.mempool.get(txid).map(|e| Found::Pool {
            tx: e.tx.clone(),
            finalized: matches!(e.status, TxStatus::Finalized { .. }),
            first_seen_ms: e.first_seen_ms,
            fee: e.fee,
        }))
    }

    fn tip(&self) -> RpcResult<(u64, Hash256)> {
        self.s.ledger.store.tip().map_err(internal)
    }

    fn verbose_tx(&self, tx: &Transaction, found: &Found) -> RpcResult<TxVerbose> {
        let (tip, _) = self.tip()?;
        let (blockhash, blockheight, confirmations, blocktime, finality) = match found {
            Found::Chain { height, block, .. } => (
                Some(block.hash().to_hex()),
                Some(*height),
                tip - height + 1,
                Some(block.header.timestamp_ms / 1000),
                "confirmed",
            ),
            Found::Pool { finalized, .. } => (None, None, 0, None, if *finalized { "finalized" } else { "pending" }),
        };
        Ok(TxVerbose {
            txid: tx.txid().to_hex(),
            hex: tx.to_hex(),
            size: tx.size(),
            version: tx.version,
            locktime: tx.lock_time,
            memo: tx.memo.as_ref().map(|m| String::from_utf8_lossy(m).into_owned()),
            coinbase: tx.is_coinbase(),
            vin: tx
                .inputs
                .iter()
                .map(|i| VinInfo {
                    txid: i.prevout.txid.to_hex(),
                    vout: i.prevout.vout,
                    pubkey: i.pubkey.to_hex(),
                    signature: hex::encode(i.signature.0),
                })
                .collect(),
            vout: tx
                .outputs
                .iter()
                .enumerate()
                .map(|(n, o)| VoutInfo {
                    value: to_time(o.value),
                    value_units: o.value,
                    n: n as u32,
                    address: o.address.to_string(),
                })
                .collect(),
            blockhash,
            blockheight,
            confirmations,
            blocktime,
            finality: finality.into(),
        })
    }

    fn block_for(&self, r: &BlockRef) -> RpcResult<Block> {
        let block = match r {
            BlockRef::Height(h) => self.s.ledger.store.block_by_height(*h).map_err(internal)?,
            BlockRef::Hash(s) => {
                let hash = Hash256::from_hex(s)
                    .ok_or_else(|| err(codes::INVALID_PARAMETER, "block hash must be 64 hex characters"))?;
                self.s.ledger.store.block_by_hash(&hash).map_err(internal)?
            }
        };
        block.ok_or_else(|| err(codes::INVALID_ADDRESS_OR_KEY, "Block not found"))
    }

    /// Spendable wallet coins, oldest first: confirmed outputs and finalized change, minus
    /// anything a pooled transaction already spends. With `enough`, confirmed outputs are read
    /// only until `enough(count, total)` holds (see [`Store::utxos_for_address_oldest`]).
    fn wallet_coins(
        &self,
        mut enough: Option<&mut dyn FnMut(usize, u64) -> bool>,
    ) -> RpcResult<Vec<(OutPoint, TxOut)>> {
        let addr = self.s.wallet.address();
        let mut out: Vec<(OutPoint, TxOut)> = Vec::new();
        let mut total = 0u64;
        self.s
            .ledger
            .store
            .utxos_for_address_oldest(&addr, |op, o| {
                if self.s.state().mempool.is_spent(op) {
                    return false;
                }
                total = total.saturating_add(o.value);
                out.push((*op, o));
                enough.as_mut().is_some_and(|f| f(out.len(), total))
            })
            .map_err(internal)?;
        out.extend(self.s.state().mempool.finalized_outputs_for(&addr));
        Ok(out)
    }

    fn finality(&self, txid: &Txid) -> RpcResult<TxFinality> {
        // In the chain: its place and its block's hash are all this needs. Decoding the whole
        // block per question cost more than the node's own work under `timectl bench`.
        let store = &self.s.ledger.store;
        let mut in_chain = store.tx_block(txid).map_err(internal)?;
        let mut st = self.s.state();
        let in_pool = st.mempool.get(txid).map(|e| matches!(e.status, TxStatus::Finalized { .. }));
        if in_chain.is_none() && in_pool.is_none() {
            // A block may have taken it out of the pool between the two looks.
            drop(st);
            in_chain = store.tx_block(txid).map_err(internal)?;
            st = self.s.state();
        }
        let times = st.finality_ms.get(txid).copied();
        let mut f = TxFinality {
            txid: txid.to_hex(),
            status: "unknown".into(),
            finalized: false,
            confidence: 0,
            blockhash: None,
            blockheight: None,
            finality_ms: times.map(|t| t.latency_ms),
            finalized_at_ms: times.map(|t| t.at_ms),
            reject_reason: None,
        };
        match (in_chain, in_pool) {
            (Some((height, hash)), _) => {
                f.status = "confirmed".into();
                f.finalized = true;
                f.confidence = self.s.cfg.avalanche.beta;
                f.blockhash = Some(hash.to_hex());
                f.blockheight = Some(height);
            }
            (None, Some(true)) => {
                f.status = "finalized".into();
                f.finalized = true;
                f.confidence = self.s.cfg.avalanche.beta;
            }
            (None, Some(false)) => {
                f.status = "pending".into();
                f.confidence = st.snowball.confidence(txid);
            }
            (None, None) => {
                if let Some(reason) = st.mempool.rejection(txid) {
                    f.status = "rejected".into();
                    f.reject_reason = Some(reason.to_string());
                }
            }
        }
        Ok(f)
    }

    fn block_verbose(&self, block: &Block, verbosity: u8) -> RpcResult<BlockVerbose> {
        let (tip, _) = self.tip()?;
        let h = &block.header;
        let next = self.s.ledger.store.block_hash_at(h.height + 1).map_err(internal)?;
        let names = &self.s.ledger.genesis.validators;
        let name = |i: u16| names.get(i as usize).map(|v| v.id.clone()).unwrap_or_else(|| format!("#{i}"));
        let tx = if verbosity >= 2 {
            // One shared copy of the block, not one per transaction.
            let shared = Arc::new(block.clone());
            let found = |t: &Transaction| Found::Chain { tx: t.clone(), height: h.height, block: shared.clone() };
            block
                .txs
                .iter()
                .map(|t| self.verbose_tx(t, &found(t)).map(|v| serde_json::to_value(v).expect("serializable")))
                .collect::<RpcResult<Vec<_>>>()?
        } else {
            block.txs.iter().map(|t| serde_json::Value::String(t.txid().to_hex())).collect()
        };
        Ok(BlockVerbose {
            hash: block.hash().to_hex(),
            height: h.height,
            confirmations: tip.saturating_sub(h.height) + 1,
            version: h.version,
            previousblockhash: (h.height > 0).then(|| h.prev_hash.to_hex()),
            nextblockhash: next.map(|n| n.to_hex()),
            merkleroot: h.merkle_root.to_hex(),
            time: h.timestamp_ms / 1000,
            time_ms: h.timestamp_ms,
            slot: h.slot,
            round: h.round,
            producer: if h.height == 0 { "genesis".into() } else { name(h.producer) },
            size: block.size(),
            n_tx: block.txs.len(),
            tx,
            last_commit_signers: block.last_commit.iter().flat_map(|c| c.signers()).map(name).collect(),
        })
    }

    fn avalanche_status(&self) -> AvalancheStatus {
        let p = &self.s.cfg.avalanche;
        let connected = self.s.p2p.connected().len();
        let st = self.s.state();
        let active = st.heartbeats.active_set(now_ms());
        let sampleable = active.iter().filter(|v| **v != self.s.me).count().min(connected);
        let (k, ap, ac) = p.effective(sampleable);
        let (p50, p99) = latency_percentiles(&st.recent_finality_ms);
        let stats = st.snowball.stats();
        AvalancheStatus {
            k,
            alpha_preference: ap,
            alpha_confidence: ac,
            beta: p.beta,
            poll_interval_ms: p.poll_interval_ms,
            max_concurrent_polls: p.max_concurrent_polls,
            sampleable_validators: sampleable,
            undecided: stats.undecided,
            conflict_sets: stats.conflict_sets,
            polls_sent: st.counters.polls_sent,
            polls_failed: st.counters.polls_failed,
            queries_answered: st.counters.queries_answered,
            finalized_total: self.s.metrics.tx_finalized.get(),
            rejected_total: self.s.metrics.tx_rejected.get(),
            expired_total: stats.expired_total,
            finality_ms_p50: p50,
            finality_ms_p99: p99,
        }
    }
}

#[async_trait]
impl TimeRpcServer for RpcImpl {
    async fn send_raw_transaction(&self, hexstring: String) -> RpcResult<String> {
        if self.s.refusing_clients() {
            return Err(tx_err(TxError::MempoolFull));
        }
        let tx =
            Transaction::from_hex(&hexstring).ok_or_else(|| err(codes::DESERIALIZATION_ERROR, "TX decode failed"))?;
        let (txid, _) = self.s.submit_tx(tx).await.map_err(tx_err)?;
        Ok(txid.to_hex())
    }

    async fn get_raw_transaction(&self, txid: String, verbose: Option<bool>) -> RpcResult<RawTransaction> {
        let id = parse_txid(&txid)?;
        let found = self
            .find_tx(&id)?
            .ok_or_else(|| err(codes::INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction"))?;
        let tx = match &found {
            Found::Chain { tx, .. } | Found::Pool { tx, .. } => tx.clone(),
        };
        if verbose.unwrap_or(false) {
            Ok(RawTransaction::Verbose(Box::new(self.verbose_tx(&tx, &found)?)))
        } else {
            Ok(RawTransaction::Hex(tx.to_hex()))
        }
    }

    async fn get_transaction(&self, txid: String) -> RpcResult<TransactionInfo> {
        let id = parse_txid(&txid)?;
        let found = self
            .find_tx(&id)?
            .ok_or_else(|| err(codes::INVALID_ADDRESS_OR_KEY, "Invalid or non-wallet transaction id"))?;
        let (tx, fee, time) = match &found {
            Found::Chain { tx, block, .. } => {
                let fee = if tx.is_coinbase() { None } else { self.fee_of_confirmed(tx) };
                (tx.clone(), fee, block.header.timestamp_ms / 1000)
            }
            Found::Pool { tx, fee, first_seen_ms, .. } => (tx.clone(), Some(*fee), first_seen_ms / 1000),
        };
        let me = self.s.wallet.address();
        let received: u64 = tx.outputs.iter().filter(|o| o.address == me).map(|o| o.value).sum();
        let mut sent: u64 = 0;
        for i in &tx.inputs {
            if self.s.wallet.address().matches(&i.pubkey) {
                if let Some(v) = self.spent_value(&i.prevout) {
                    sent += v;
                }
            }
        }
        Ok(TransactionInfo {
            tx: self.verbose_tx(&tx, &found)?,
            fee: fee.map(to_time),
            // Net in base units first: subtracting two TIME floats leaves rounding noise.
            amount: (received as i128 - sent as i128) as f64 / crate::chain::amount::COIN as f64,
            time,
        })
    }

    async fn create_raw_transaction(
        &self,
        inputs: Vec<InputRef>,
        outputs: BTreeMap<String, f64>,
        locktime: Option<u64>,
        memo: Option<String>,
    ) -> RpcResult<String> {
        if inputs.is_empty() || outputs.is_empty() {
            return Err(err(codes::INVALID_PARAMETER, "need at least one input and one output"));
        }
        let mut prevouts = Vec::new();
        for i in &inputs {
            let op = OutPoint { txid: parse_txid(&i.txid)?, vout: i.vout };
            // The same coin twice can never be valid; say so now rather than at broadcast.
            if prevouts.contains(&op) {
                return Err(err(codes::INVALID_PARAMETER, format!("duplicate input {}:{}", i.txid, i.vout)));
            }
            prevouts.push(op);
        }
        let mut outs = Vec::new();
        for (addr, amount) in &outputs {
            outs.push(TxOut { value: amount_units(*amount)?, address: parse_address(addr, &self.s)? });
        }
        let memo = memo.map(String::into_bytes);
        if memo.as_ref().is_some_and(|m| m.len() > crate::chain::validate::MAX_MEMO_LEN) {
            return Err(err(codes::INVALID_PARAMETER, "memo is longer than 80 bytes"));
        }
        Ok(Transaction::unsigned(prevouts, outs, locktime.unwrap_or(0), memo).to_hex())
    }

    async fn sign_raw_transaction_with_wallet(&self, hexstring: String) -> RpcResult<SignResult> {
        let mut tx =
            Transaction::from_hex(&hexstring).ok_or_else(|| err(codes::DESERIALIZATION_ERROR, "TX decode failed"))?;
        let me = self.s.wallet.address();
        let owned: std::collections::HashSet<OutPoint> =
            self.wallet_coins(None)?.into_iter().filter(|(_, o)| o.address == me).map(|(op, _)| op).collect();
        let complete = self.s.wallet.sign_owned(&mut tx, |op| owned.contains(op), self.s.chain_id());
        Ok(SignResult { hex: tx.to_hex(), complete })
    }

    async fn send_to_address(&self, address: String, amount: f64, memo: Option<String>) -> RpcResult<String> {
        let to = parse_address(&address, &self.s)?;
        let units = amount_units(amount)?;
        let _spending = self.wallet_spend.lock().await;
        let memo = memo.map(String::into_bytes);
        // Read coins until they cover the amount and a fee reckoned high (an input signs to
        // under 160 bytes); should the wallet's own reckoning still want more, read them all.
        let memo_len = memo.as_ref().map_or(0, Vec::len) as u64;
        let mut covers = |count: usize, total: u64| {
            let size = 256 + memo_len + 160 * count as u64;
            total >= units.saturating_add(crate::chain::amount::min_fee(size as usize))
        };
        let pay = |coins: &[(OutPoint, TxOut)]| self.s.wallet.pay(coins, to, units, memo.clone(), self.s.chain_id());
        let tx = match pay(&self.wallet_coins(Some(&mut covers))?) {
            Err(crate::wallet::WalletError::InsufficientFunds { .. }) => pay(&self.wallet_coins(None)?),
            other => other,
        }
        .map_err(|e| match e {
            crate::wallet::WalletError::InsufficientFunds { .. } => {
                err(codes::WALLET_INSUFFICIENT_FUNDS, e.to_string())
            }
            other => err(codes::INVALID_PARAMETER, other.to_string()),
        })?;
        let (txid, _) = self.s.submit_tx(tx).await.map_err(tx_err)?;
        Ok(txid.to_hex())
    }

    async fn merge_utxos(&self, min_count: Option<usize>, max_count: Option<usize>) -> RpcResult<MergeResult> {
        let limit = crate::chain::validate::MAX_TX_INPUTS;
        let min = min_count.unwrap_or(2).clamp(2, limit);
        let max = max_count.unwrap_or(500).clamp(min, limit);
        let _spending = self.wallet_spend.lock().await;
        let mut coins = self.wallet_coins(None)?;
        // Smallest first: merging is for dust-like change.
        coins.sort_by_key(|(_, o)| o.value);
        coins.truncate(max);
        if coins.len() < min {
            return Ok(MergeResult { txid: None, merged: 0, amount: 0.0 });
        }
        let tx = self
            .s
            .wallet
            .merge(&coins, self.s.chain_id())
            .map_err(|e| err(codes::WALLET_INSUFFICIENT_FUNDS, e.to_string()))?;
        let amount = to_time(tx.outputs[0].value);
        let (txid, _) = self.s.submit_tx(tx).await.map_err(tx_err)?;
        Ok(MergeResult { txid: Some(txid.to_hex()), merged: coins.len(), amount })
    }

    async fn get_block(&self, blockref: BlockRef, verbosity: Option<u8>) -> RpcResult<BlockResult> {
        let block = self.block_for(&blockref)?;
        match verbosity.unwrap_or(1) {
            0 => Ok(BlockResult::Hex(hex::encode(block.to_bytes()))),
            v @ (1 | 2) => Ok(BlockResult::Verbose(Box::new(self.block_verbose(&block, v)?))),
            _ => Err(err(codes::INVALID_PARAMETER, "verbosity must be 0, 1 or 2")),
        }
    }

    async fn get_block_hash(&self, height: u64) -> RpcResult<String> {
        self.s
            .ledger
            .store
            .block_hash_at(height)
            .map_err(internal)?
            .map(|h| h.to_hex())
            .ok_or_else(|| err(codes::INVALID_PARAMETER, "Block height out of range"))
    }

    async fn get_best_block_hash(&self) -> RpcResult<String> {
        Ok(self.tip()?.1.to_hex())
    }

    async fn get_block_count(&self) -> RpcResult<u64> {
        Ok(self.tip()?.0)
    }

    async fn get_blockchain_info(&self) -> RpcResult<BlockchainInfo> {
        let (height, hash) = self.tip()?;
        let tip =
            self.s.ledger.store.block_by_height(height).map_err(internal)?.ok_or_else(|| internal("tip missing"))?;
        let g = &self.s.ledger.genesis;
        let best_peer = self.s.p2p.peer_info().iter().map(|p| p.best_height).max().unwrap_or(0);
        Ok(BlockchainInfo {
            chain: match g.network {
                crate::chain::Network::Testnet => "test".into(),
                crate::chain::Network::Mainnet => "main".into(),
            },
            chain_id: g.chain_id.clone(),
            blocks: height,
            headers: height.max(best_peer),
            bestblockhash: hash.to_hex(),
            genesishash: self.s.ledger.genesis_hash.to_hex(),
            time: tip.header.timestamp_ms / 1000,
            block_time_secs: g.block_time_secs,
            current_slot: g.slot_at(now_ms()),
            initialblockdownload: best_peer > height + 1,
            size_on_disk: self.s.ledger.store.size_on_disk(),
        })
    }

    async fn get_balance(&self, address: Option<String>, minconf: Option<u64>) -> RpcResult<f64> {
        let minconf = minconf.unwrap_or(0);
        let (tip, _) = self.tip()?;
        let addr = match address {
            Some(a) => parse_address(&a, &self.s)?,
            None => self.s.wallet.address(),
        };
        let utxos = self.s.ledger.store.utxos_for_address(&addr).map_err(internal)?;
        let mut total: u64 = utxos.iter().filter(|(_, _, h)| tip - h + 1 >= minconf).map(|(_, o, _)| o.value).sum();
        if minconf == 0 {
            // Finalized transactions are final: count their effect before a block holds them.
            let st = self.s.state();
            for e in st.mempool.entries().filter(|e| matches!(e.status, TxStatus::Finalized { .. })) {
                for i in &e.tx.inputs {
                    if let Some((_, o, _)) = utxos.iter().find(|(op, _, _)| *op == i.prevout) {
                        total -= o.value;
                    }
                }
            }
            total += st.mempool.finalized_outputs_for(&addr).iter().map(|(_, o)| o.value).sum::<u64>();
        }
        Ok(to_time(total))
    }

    async fn list_unspent(
        &self,
        minconf: Option<u64>,
        maxconf: Option<u64>,
        addresses: Option<Vec<String>>,
    ) -> RpcResult<Vec<Unspent>> {
        let minconf = minconf.unwrap_or(1);
        let maxconf = maxconf.unwrap_or(9_999_999);
        let (tip, _) = self.tip()?;
        let addrs: Vec<Address> = match addresses {
            Some(list) => list.iter().map(|a| parse_address(a, &self.s)).collect::<RpcResult<_>>()?,
            None => vec![self.s.wallet.address()],
        };
        let mut out = Vec::new();
        let st = self.s.state();
        for addr in addrs {
            for (op, o, h) in self.s.ledger.store.utxos_for_address(&addr).map_err(internal)? {
                let conf = tip - h + 1;
                if conf >= minconf && conf <= maxconf {
                    let spendable = addr == self.s.wallet.address() && !st.mempool.is_spent(&op);
                    out.push(unspent(&op, &o, conf, spendable));
                }
            }
            if minconf == 0 {
                for (op, o) in st.mempool.finalized_outputs_for(&addr) {
                    out.push(unspent(&op, &o, 0, addr == self.s.wallet.address()));
                }
            }
        }
        Ok(out)
    }

    async fn get_txout_set_info(&self) -> RpcResult<TxOutSetInfo> {
        let info = self.s.ledger.store.utxo_set_info().map_err(internal)?;
        Ok(TxOutSetInfo {
            height: info.height,
            bestblock: info.tip.to_hex(),
            txouts: info.count,
            total_amount: to_time(info.total),
            total_units: info.total,
            hash_serialized: info.hash.to_hex(),
        })
    }

    async fn get_network_info(&self) -> RpcResult<NetworkInfo> {
        let peers = self.s.p2p.peer_info();
        let inbound = peers.iter().filter(|p| p.inbound).count();
        Ok(NetworkInfo {
            version: 10000,
            subversion: format!("/timed:{}/", env!("CARGO_PKG_VERSION")),
            protocolversion: crate::p2p::message::PROTOCOL_VERSION,
            chain_id: self.s.chain_id().to_string(),
            genesis_hash: self.s.ledger.genesis_hash.to_hex(),
            validator_id: self.s.cfg.validator_id.clone(),
            p2p_listen: self.s.p2p.local_addr().to_string(),
            connections: peers.len(),
            connections_in: inbound,
            connections_out: peers.len() - inbound,
            known_addresses: self.s.p2p.known_addresses(),
            networkactive: true,
        })
    }

    async fn get_peer_info(&self) -> RpcResult<Vec<PeerInfo>> {
        Ok(self.s.p2p.peer_info())
    }

    async fn uptime(&self) -> RpcResult<u64> {
        Ok(self.s.started.elapsed().as_secs())
    }

    async fn get_mempool_info(&self) -> RpcResult<MempoolInfo> {
        let st = self.s.state();
        let m = &st.mempool;
        let finalized = m.count_finalized();
        Ok(MempoolInfo {
            loaded: true,
            size: m.len(),
            bytes: m.bytes(),
            usage: m.usage(),
            maxmempool: m.max_bytes(),
            mempoolminfee: to_time(min_fee(0)),
            pending: m.len() - finalized,
            finalized,
            conflicts: m.conflict_count(),
        })
    }

    async fn get_raw_mempool(&self, verbose: Option<bool>) -> RpcResult<RawMempool> {
        let st = self.s.state();
        let pooled: std::collections::HashSet<Txid> = st.mempool.entries().map(|e| e.txid).collect();
        if verbose.unwrap_or(false) {
            let map = st
                .mempool
                .entries()
                .map(|e| {
                    let depends =
                        e.tx.inputs
                            .iter()
                            .filter(|i| pooled.contains(&i.prevout.txid))
                            .map(|i| i.prevout.txid.to_hex())
                            .collect();
                    let entry = MempoolEntry {
                        size: e.size,
                        fee: to_time(e.fee),
                        time: e.first_seen_ms / 1000,
                        finality: match e.status {
                            TxStatus::Pending => "pending".into(),
                            TxStatus::Finalized { .. } => "finalized".into(),
                        },
                        depends,
                    };
                    (e.txid.to_hex(), entry)
                })
                .collect();
            Ok(RawMempool::Verbose(map))
        } else {
            let mut ids: Vec<String> = pooled.iter().map(|t| t.to_hex()).collect();
            ids.sort();
            Ok(RawMempool::Txids(ids))
        }
    }

    async fn masternode_list(&self) -> RpcResult<Vec<MasternodeEntry>> {
        let now = now_ms();
        let parent = self.s.ledger.tip_block().map_err(internal)?;
        let eligible = self.s.ledger.eligible_after(&parent).map_err(internal)?;
        let connected: std::collections::HashSet<u16> = self.s.p2p.connected().into_iter().collect();
        let st = self.s.state();
        Ok(self
            .validators()
            .map(|(i, v)| {
                let last = st.heartbeats.last(i);
                MasternodeEntry {
                    id: v.id.clone(),
                    index: i,
                    pubkey: v.pubkey.to_hex(),
                    tier: v.tier.name().into(),
                    collateral: to_time(v.tier.collateral()),
                    reward_address: v.reward_address.to_string(),
                    status: st.heartbeats.status(i, now).name().into(),
                    leader_eligible: eligible.contains(&i),
                    connected: connected.contains(&i) || i == self.s.me,
                    last_heartbeat_seq: last.map(|(seq, _)| seq),
                    last_heartbeat: last.map(|(_, ts)| ts / 1000),
                    verified_heartbeats: st.heartbeats.verified_count(i),
                }
            })
            .collect())
    }

    async fn masternode_status(&self) -> RpcResult<MasternodeStatus> {
        let (height, _) = self.tip()?;
        let v = &self.s.ledger.genesis.validators[self.s.me as usize];
        let st = self.s.state();
        Ok(MasternodeStatus {
            id: v.id.clone(),
            index: self.s.me,
            pubkey: v.pubkey.to_hex(),
            tier: v.tier.name().into(),
            reward_address: v.reward_address.to_string(),
            wallet_address: self.s.wallet.address().to_string(),
            status: st.heartbeats.status(self.s.me, now_ms()).name().into(),
            heartbeat_seq: st.heartbeat_seq,
            verified_heartbeats: st.heartbeats.verified_count(self.s.me),
            blocks_produced: st.view.blocks_produced,
            height,
        })
    }

    async fn get_consensus_info(&self) -> RpcResult<ConsensusInfo> {
        let avalanche = self.avalanche_status();
        let g = &self.s.ledger.genesis;
        let parent = self.s.ledger.tip_block().map_err(internal)?;
        let eligible = self.s.ledger.eligible_after(&parent).map_err(internal)?;
        let st = self.s.state();
        let v = st.view.clone();
        Ok(ConsensusInfo {
            mode: "snowball+tsdc-bft".into(),
            height: v.height,
            round: v.round,
            step: v.step,
            current_slot: g.slot_at(now_ms()),
            slot_leader: v.leader.and_then(|l| g.validators.get(l as usize)).map(|x| x.id.clone()),
            block_time_secs: g.block_time_secs,
            propose_timeout_ms: self.s.cfg.propose_timeout_ms,
            validators: g.validators.len(),
            active_validators: eligible.len(),
            quorum: g.quorum(),
            last_block_time: v.last_block_ms / 1000,
            blocks_committed: v.blocks_committed,
            rounds_timed_out: v.rounds_timed_out,
            avalanche,
        })
    }

    async fn get_avalanche_status(&self) -> RpcResult<AvalancheStatus> {
        Ok(self.avalanche_status())
    }

    async fn validate_address(&self, address: String) -> RpcResult<AddressValidation> {
        Ok(match Address::parse(&address) {
            Ok(a) => AddressValidation {
                isvalid: a.network() == self.s.ledger.genesis.network,
                address: Some(a.to_string()),
                network: Some(format!("{:?}", a.network()).to_lowercase()),
                ismine: a == self.s.wallet.address(),
                error: (a.network() != self.s.ledger.genesis.network).then(|| "address is for another network".into()),
            },
            Err(e) => AddressValidation {
                isvalid: false,
                address: None,
                network: None,
                ismine: false,
                error: Some(e.to_string()),
            },
        })
    }

    async fn get_attestation_stats(&self) -> RpcResult<AttestationStats> {
        let now = now_ms();
        let st = self.s.state();
        let hb = &st.heartbeats;
        let stats = hb.stats();
        Ok(AttestationStats {
            heartbeat_interval_secs: self.s.cfg.heartbeat_ms / 1000,
            min_witnesses: hb.min_witnesses(),
            heartbeats_sent: st.counters.heartbeats_sent,
            heartbeats_received: stats.heartbeats_received,
            attestations_given: st.counters.attestations_given,
            attestations_received: stats.attestations_received,
            invalid_rejected: st.counters.invalid_rejected,
            verified_heartbeats: stats.verified_total,
            per_validator: self
                .validators()
                .map(|(i, v)| ValidatorAttestation {
                    id: v.id.clone(),
                    last_seq: hb.last(i).map(|(s, _)| s),
                    verified: hb.verified_count(i),
                    unverified: hb.unverified_count(i),
                    status: hb.status(i, now).name().into(),
                })
                .collect(),
        })
    }

    async fn get_heartbeat_history(
        &self,
        validator_id: Option<String>,
        count: Option<usize>,
    ) -> RpcResult<Vec<HeartbeatRecord>> {
        let g = &self.s.ledger.genesis;
        let filter = match &validator_id {
            Some(id) => Some(
                g.validator_index(id)
                    .ok_or_else(|| err(codes::INVALID_PARAMETER, format!("unknown validator {id:?}")))?,
            ),
            None => None,
        };
        let count = count.unwrap_or(50).min(1000);
        let st = self.s.state();
        let name = |i: u16| g.validators.get(i as usize).map(|v| v.id.clone()).unwrap_or_default();
        let mut records: Vec<HeartbeatRecord> = st
            .heartbeats
            .history(filter)
            .into_iter()
            .map(|r| HeartbeatRecord {
                validator_id: name(r.validator),
                sequence: r.sequence,
                timestamp_ms: r.timestamp_ms,
                witnesses: r.witnesses.iter().map(|w| name(*w)).collect(),
                verified: r.verified,
            })
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.timestamp_ms));
        records.truncate(count);
        Ok(records)
    }

    async fn get_transaction_finality(&self, txid: String) -> RpcResult<TxFinality> {
        let id = parse_txid(&txid)?;
        self.finality(&id)
    }

    async fn wait_transaction_finality(&self, txid: String, timeout: Option<f64>) -> RpcResult<TxFinality> {
        let id = parse_txid(&txid)?;
        let secs = timeout.unwrap_or(30.0);
        if !(0.0..=3600.0).contains(&secs) {
            return Err(err(codes::INVALID_PARAMETER, "timeout must be 0..=3600 seconds"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        loop {
            // Register for the wake-up before looking, so a change in between is not missed.
            let notified = self.s.finality_changed.notified();
            let f = self.finality(&id)?;
            if f.finalized || f.status == "rejected" {
                return Ok(f);
            }
            if f.status == "unknown" && self.s.state().mempool.get(&id).is_none() && secs == 0.0 {
                return Err(err(codes::INVALID_ADDRESS_OR_KEY, "unknown transaction"));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(err(
                    codes::TIMEOUT,
                    format!("transaction {txid} not final after {secs} s (status {})", f.status),
                ));
            }
        }
    }
}

impl RpcImpl {
    /// Genesis validators with their index.
    fn validators(&self) -> impl Iterator<Item = (u16, &crate::chain::ValidatorInfo)> + '_ {
        self.s.ledger.genesis.validators.iter().enumerate().map(|(i, v)| (i as u16, v))
    }

    fn spent_value(&self, op: &OutPoint) -> Option<u64> {
        let (tx, _) = self.s.ledger.store.get_tx(&op.txid).ok().flatten()?;
        tx.outputs.get(op.vout as usize).map(|o| o.value)
    }

    fn fee_of_confirmed(&self, tx: &Transaction) -> Option<u64> {
        let ins: Option<Vec<u64>> = tx.inputs.iter().map(|i| self.spent_value(&i.prevout)).collect();
        let total_in: u64 = ins?.iter().sum();
        total_in.checked_sub(tx.output_total()?)
    }
}
