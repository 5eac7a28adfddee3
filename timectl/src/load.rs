//! The payment load of `timectl bench` and `timectl stability --load`: fresh keys, coins for
//! them, and signed one-input payments from those keys, shipped with `sendrawtransaction`.
//!
//! - `bench` funds its keys from a devnet's publicly derivable validator wallets (one coin per
//!   payment of the ladder) and signs every payment before a step starts, so the sender only
//!   ships bytes.
//! - `stability --load` ([`steady`]) runs for hours on any network with wallets: each node's
//!   wallet funds a pool of coins once (`sendtoaddress`), then every payment spends a pool coin
//!   to the next key and its output goes back into the pool, to be spent again once it has had
//!   time to become final. Open loop, round-robin over the nodes. The monitor hands over each
//!   node's address and credentials as it renews them (a restarted node has a new cookie, a
//!   re-opened SSH tunnel a new local port); a node's client is also built anew after failures.

use crate::client;
use crate::inventory::Node;
use jsonrpsee::http_client::HttpClient;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;
use timed::chain::address::{Address, Network};
use timed::chain::amount::min_fee;
use timed::chain::crypto::Keypair;
use timed::chain::genesis::devnet_wallet_key;
use timed::chain::tx::{OutPoint, Transaction, TxOut, Txid};
use timed::chain::validate::{MAX_TX_OUTPUTS, MAX_TX_SIZE};
use timed::chain::Hash256;

/// Value of each coin a bench key receives; a payment sends it on minus [`PAYMENT_FEE`].
pub const COIN_VALUE: u64 = 1_000_000;
/// Above the minimum fee of a one-input, one-output payment (about 1,200 units).
pub const PAYMENT_FEE: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("chain {0:?} is not a devnet: bench needs funded keys it can derive")]
    NotDevnet(String),
    #[error(
        "the validator wallets funded {have} of the {need} coins the ladder needs, and have no spendable coin left"
    )]
    NotEnoughFunds { have: usize, need: usize },
}

/// Key of a validator's devnet wallet, if the chain is a devnet (chain id `timecoin-devnet-N`).
pub fn devnet_funder(chain_id: &str, validator_id: &str) -> Result<Funder, LoadError> {
    if !chain_id.starts_with("timecoin-devnet-") {
        return Err(LoadError::NotDevnet(chain_id.to_string()));
    }
    let key = devnet_wallet_key(validator_id);
    let addr = Address::from_pubkey(Network::Testnet, &key.public());
    Ok(Funder { key, addr })
}

/// A wallet whose coins pay for the load.
pub struct Funder {
    pub key: Keypair,
    pub addr: Address,
}

/// A coin one bench key can spend.
#[derive(Clone, Debug)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub key: usize,
    pub value: u64,
}

/// Fresh keys for one run; random, so runs never collide with each other's coins.
pub struct Keys {
    pub keys: Vec<Keypair>,
    pub addrs: Vec<Address>,
}

impl Keys {
    pub fn generate(n: usize) -> Self {
        let keys: Vec<Keypair> = (0..n.max(1)).map(|_| Keypair::generate()).collect();
        let addrs = keys.iter().map(|k| Address::from_pubkey(Network::Testnet, &k.public())).collect();
        Keys { keys, addrs }
    }
}

/// Outputs per funding transaction: the output limit less one for change, and well inside the
/// size limit (an output is about 33 bytes).
pub fn outputs_per_funding_tx() -> usize {
    (MAX_TX_OUTPUTS - 1).min(MAX_TX_SIZE / 50)
}

/// One funding transaction: spends `input` (worth `input_value`, owned by `funder`) into `count`
/// coins for the bench keys, starting at key `first_key`, plus change back to the funder.
/// Returns it with the coins it creates, or None if the input is too small.
pub fn funding_tx(
    funder: &Funder,
    input: OutPoint,
    input_value: u64,
    keys: &Keys,
    first_key: usize,
    count: usize,
    chain_id: &str,
) -> Option<(Transaction, Vec<Coin>)> {
    let mut outputs: Vec<TxOut> = (0..count)
        .map(|i| TxOut { value: COIN_VALUE, address: keys.addrs[(first_key + i) % keys.addrs.len()] })
        .collect();
    outputs.push(TxOut { value: 0, address: funder.addr });
    let probe = Transaction::unsigned(vec![input], outputs.clone(), 0, None);
    // Signatures have a fixed size, so the unsigned size is the signed size.
    let fee = min_fee(probe.size()) + 1_000;
    let spent = COIN_VALUE.checked_mul(count as u64)?.checked_add(fee)?;
    let change = input_value.checked_sub(spent)?;
    if change < timed::chain::amount::DUST_LIMIT {
        outputs.pop();
    } else {
        outputs.last_mut().expect("change output").value = change;
    }
    let mut tx = Transaction::unsigned(vec![input], outputs, 0, None);
    tx.sign_all(&funder.key, chain_id);
    let txid = tx.txid();
    let coins = (0..count)
        .map(|i| Coin {
            outpoint: OutPoint { txid, vout: i as u32 },
            key: (first_key + i) % keys.keys.len(),
            value: COIN_VALUE,
        })
        .collect();
    Some((tx, coins))
}

/// A signed payment spending `coin` to another bench key: (txid, hex).
pub fn payment(coin: &Coin, keys: &Keys, chain_id: &str) -> (Txid, String) {
    let to = keys.addrs[(coin.key + 1) % keys.addrs.len()];
    let mut tx = Transaction::unsigned(
        vec![coin.outpoint],
        vec![TxOut { value: coin.value - PAYMENT_FEE, address: to }],
        0,
        None,
    );
    tx.sign_all(&keys.keys[coin.key], chain_id);
    (tx.txid(), tx.to_hex())
}

// ---------- funding for `bench` ----------

fn hinted(message: String, hint: &str) -> anyhow::Error {
    crate::error::Hinted { message, hint: hint.into() }.into()
}

/// Spends the validator wallets' coins into `total` coins for the bench keys, and waits until
/// every funding transaction is final on a node other than the one it was sent to and in a block
/// on every node. A devnet wallet holds a few dozen coins and each funds one transaction of
/// [`outputs_per_funding_tx`] coins, so a ladder that needs more goes in rounds: each round's
/// change, once in a block, is the next round's input.
pub async fn fund_from_devnet(
    nodes: &[Node],
    clients: &[HttpClient],
    chain_id: &str,
    keys: &Keys,
    total: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Coin>> {
    let mut coins = Vec::with_capacity(total);
    while coins.len() < total {
        let before = coins.len();
        let txs = funding_round(nodes, clients, chain_id, keys, total, &mut coins).await?;
        if txs.is_empty() {
            return Err(LoadError::NotEnoughFunds { have: before, need: total }.into());
        }
        tracing::info!(txs = txs.len(), coins = coins.len() - before, of = total, "funding round");
        settle_funding(nodes, clients, &txs, timeout).await?;
    }
    Ok(coins)
}

/// One funding transaction per spendable wallet coin, until `coins` holds `total`.
async fn funding_round(
    nodes: &[Node],
    clients: &[HttpClient],
    chain_id: &str,
    keys: &Keys,
    total: usize,
    coins: &mut Vec<Coin>,
) -> anyhow::Result<Vec<(usize, Transaction)>> {
    let per_tx = outputs_per_funding_tx();
    let mut txs = Vec::new();
    // Each node's own wallet, so `spendable` already excludes what its pool spends.
    'nodes: for (i, n) in nodes.iter().enumerate() {
        let funder = devnet_funder(chain_id, &n.validator_id)
            .map_err(|e| hinted(e.to_string(), "start a devnet with `timectl local up`, or point --network at one"))?;
        let utxos = clients[i]
            .list_unspent(Some(1), None, None)
            .await
            .map_err(|e| anyhow::anyhow!("{}: listunspent: {}", n.name, client::compact_error(&e)))?;
        let mine = funder.addr.to_string();
        for u in utxos.into_iter().filter(|u| u.spendable && u.address == mine) {
            if coins.len() >= total {
                break 'nodes;
            }
            let Some(txid) = Hash256::from_hex(&u.txid) else { continue };
            let count = per_tx.min(total - coins.len());
            let op = OutPoint { txid, vout: u.vout };
            if let Some((tx, c)) = funding_tx(&funder, op, u.amount_units, keys, coins.len(), count, chain_id) {
                txs.push((i, tx));
                coins.extend(c);
            }
        }
    }
    Ok(txs)
}

/// Sends one round's funding transactions and waits until each is final on a node other than
/// the one it was sent to, then until it is in a block on every node.
async fn settle_funding(
    nodes: &[Node],
    clients: &[HttpClient],
    txs: &[(usize, Transaction)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for (i, tx) in txs {
        let id = clients[*i].send_raw_transaction(tx.to_hex()).await.map_err(|e| {
            anyhow::anyhow!("{}: funding transaction refused: {}", nodes[*i].name, client::compact_error(&e))
        })?;
        ids.push((*i, id));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for (i, id) in &ids {
        let (i, id) = (*i, id.clone());
        let observer = (i + 1) % nodes.len();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(Duration::from_secs(20)).as_secs_f64();
            let c = client::rpc_client(&nodes[observer], timeout + Duration::from_secs_f64(wait))
                .map_err(anyhow::Error::msg)?;
            match c.wait_transaction_finality(id.clone(), Some(wait)).await {
                Ok(f) if f.finalized => break,
                Ok(f) if f.status == "rejected" => anyhow::bail!("funding transaction {id} was rejected"),
                Ok(_) | Err(_) if left.is_zero() => {
                    return Err(hinted(
                        format!("funding transaction {id} was not final on {} within 90 s", nodes[observer].name),
                        "check `timectl status`: are all nodes up and connected?",
                    ))
                }
                _ => {}
            }
        }
    }
    // Then wait for them to be in blocks on every node: committing tens of thousands of new
    // outputs is work the first step should not be charged with, and the next round spends
    // their change.
    let confirm_deadline = Instant::now() + Duration::from_secs(60);
    for (i, c) in clients.iter().enumerate() {
        for (_, id) in &ids {
            loop {
                match c.get_transaction_finality(id.clone()).await {
                    Ok(f) if f.status == "confirmed" => break,
                    _ if Instant::now() > confirm_deadline => {
                        tracing::warn!(node = %nodes[i].name, %id, "funding transaction not in a block after 60 s; starting anyway");
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    Ok(())
}

// ---------- the steady stream of `stability --load` ----------

/// What one pool coin is worth: a thousand payments' fees, so a coin lasts hours.
const STEADY_COIN: u64 = 1_000 * PAYMENT_FEE;
/// How long a coin rests after the payment that made it before it is spent: long enough to be
/// final (well under a second on a healthy network), short enough for a small pool.
const REST: Duration = Duration::from_secs(10);
/// Payments waiting for an answer at once; beyond this a tick is counted as refused.
const IN_FLIGHT: usize = 256;
/// Failures in a row after which a node's client is built anew: a restarted node has a new
/// cookie, and a client kept across its restart has been seen to keep failing.
const REBUILD_AFTER: u32 = 3;
/// Sends of one coin that may fail before it is given up (it may have been spent after all).
const TRIES: u32 = 3;

#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

impl Counters {
    pub fn get(&self) -> (u64, u64) {
        (self.accepted.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

/// Coins for a pool: in use by `ready_at`.
struct PoolCoin {
    ready_at: Instant,
    coin: Coin,
    tries: u32,
}

/// The pool size for a rate: every coin rests [`REST`] between payments, with room for
/// payments that fail.
fn pool_size(tps: f64) -> usize {
    ((tps * REST.as_secs_f64() * 2.0).ceil() as usize).clamp(8, 4_000)
}

/// The coin a payment creates (its only output, to the next key), if it can pay another fee.
fn next_coin(spent: &Coin, txid: Txid, keys: &Keys) -> Option<Coin> {
    let value = spent.value.checked_sub(PAYMENT_FEE)?;
    (value >= PAYMENT_FEE + timed::chain::amount::DUST_LIMIT).then(|| Coin {
        outpoint: OutPoint { txid, vout: 0 },
        key: (spent.key + 1) % keys.keys.len(),
        value,
    })
}

/// One coin of [`STEADY_COIN`] for key `k`, paid by `c`'s wallet; found in the transaction by
/// its address and value.
async fn fund_key(c: &HttpClient, keys: &Keys, k: usize, timeout: Duration) -> Option<Coin> {
    let addr = keys.addrs[k];
    let amount = timed::chain::amount::to_time(STEADY_COIN);
    let txid = tokio::time::timeout(timeout, c.send_to_address(addr.to_string(), amount, None)).await.ok()?.ok()?;
    let info = tokio::time::timeout(timeout, c.get_transaction(txid.clone())).await.ok()?.ok()?;
    let tx = Transaction::from_hex(&info.tx.hex)?;
    let vout = tx.outputs.iter().position(|o| o.address == addr && o.value == STEADY_COIN)?;
    Some(Coin { outpoint: OutPoint { txid: tx.txid(), vout: vout as u32 }, key: k, value: STEADY_COIN })
}

/// Funds keys `first..first + count`, key k by node k mod n's wallet; one call at a time per
/// wallet (concurrent calls on one wallet may pick the same inputs), the wallets in parallel.
async fn fund_pool(clients: &[HttpClient], keys: &Keys, first: usize, count: usize, timeout: Duration) -> Vec<Coin> {
    let n = clients.len();
    let per_node = (0..n).map(|i| async move {
        let mut coins = Vec::new();
        for k in (first..first + count).filter(|k| k % n == i) {
            if let Some(c) = fund_key(&clients[i], keys, k % keys.keys.len(), timeout).await {
                coins.push(c);
            }
        }
        coins
    });
    futures::future::join_all(per_node).await.into_iter().flatten().collect()
}

/// Runs until `stop` turns true: `tps` payments a second, counted accepted or refused (a
/// tick with no coin ready or too many in flight counts as refused). Finality is the
/// monitor's probes' business.
pub async fn steady(
    mut nodes_rx: tokio::sync::watch::Receiver<Vec<Node>>,
    tps: f64,
    timeout: Duration,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut nodes = nodes_rx.borrow_and_update().clone();
    let n = nodes.len();
    if n == 0 || tps <= 0.0 {
        return;
    }
    let Ok(mut clients) = nodes.iter().map(|node| client::rpc_client(node, timeout)).collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    // The chain id is part of what is signed; the first node that answers gives it.
    let chain_id = 'found: loop {
        for c in &clients {
            if let Ok(Ok(info)) = tokio::time::timeout(timeout, c.get_blockchain_info()).await {
                break 'found info.chain_id;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    let target = pool_size(tps);
    let keys = Arc::new(Keys::generate(target));
    let mut pool: VecDeque<PoolCoin> = VecDeque::new();
    let (funded_tx, mut funded_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Coin>>();
    let mut funding = false;
    // Not before then: wallets that fund nothing (nodes down) are asked again after a pause.
    let mut fund_after = Instant::now();
    let mut next_key = 0usize;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(PoolCoin, Option<Txid>, usize)>();
    let mut in_flight = 0usize;
    let mut fails = vec![0u32; n];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / tps));
    // Open loop: a late tick is not made up for in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0usize;
    loop {
        // Fewer than half the coins left (spent to dust, lost to refusals): fund more, without
        // holding up the ticks.
        if !funding && pool.len() + in_flight < target / 2 + 1 && Instant::now() >= fund_after {
            funding = true;
            let (clients, keys, tx) = (clients.clone(), keys.clone(), funded_tx.clone());
            let (first, count) = (next_key, target - pool.len().min(target));
            next_key += count;
            tokio::spawn(async move {
                let _ = tx.send(fund_pool(&clients, &keys, first, count, timeout).await);
            });
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some(coins) = funded_rx.recv() => {
                funding = false;
                if coins.is_empty() {
                    fund_after = Instant::now() + Duration::from_secs(5);
                }
                // Funding transactions need a moment to be final before they are spent.
                let ready_at = Instant::now() + Duration::from_secs(2);
                pool.extend(coins.into_iter().map(|coin| PoolCoin { ready_at, coin, tries: 0 }));
                continue;
            }
            Some((mut pc, sent, from)) = done_rx.recv() => {
                in_flight -= 1;
                let now = Instant::now();
                match sent {
                    Some(txid) => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        fails[from] = 0;
                        if let Some(coin) = next_coin(&pc.coin, txid, &keys) {
                            pool.push_back(PoolCoin { ready_at: now + REST, coin, tries: 0 });
                        }
                    }
                    None => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        fails[from] += 1;
                        pc.tries += 1;
                        if pc.tries < TRIES {
                            pc.ready_at = now + REST;
                            pool.push_back(pc);
                        }
                    }
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        // The monitor renewed a node's tunnel or cookie: its old client can only fail.
        if nodes_rx.has_changed().unwrap_or(false) {
            let fresh = nodes_rx.borrow_and_update().clone();
            for (i, node) in fresh.iter().enumerate().take(n) {
                if node.rpc != nodes[i].rpc || node.rpc_auth != nodes[i].rpc_auth {
                    if let Ok(c) = client::rpc_client(node, timeout) {
                        clients[i] = c;
                        fails[i] = 0;
                    }
                }
            }
            nodes = fresh;
        }
        let from = k % n;
        k += 1;
        let ready = pool.front().is_some_and(|p| p.ready_at <= Instant::now());
        if !ready || in_flight >= IN_FLIGHT {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let pc = pool.pop_front().expect("front checked");
        if fails[from] >= REBUILD_AFTER {
            if let Ok(c) = client::rpc_client(&nodes[from], timeout) {
                clients[from] = c;
            }
            fails[from] = 0;
        }
        let (txid, hex) = payment(&pc.coin, &keys, &chain_id);
        let (c, done) = (clients[from].clone(), done_tx.clone());
        in_flight += 1;
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, c.send_raw_transaction(hex)).await;
            let sent = matches!(r, Ok(Ok(_))).then_some(txid);
            let _ = done.send((pc, sent, from));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timed::chain::crypto::Hash256;

    #[test]
    fn funding_and_payments_pass_the_stateless_rules() {
        let chain = "timecoin-devnet-3";
        let funder = devnet_funder(chain, "validator1").unwrap();
        let keys = Keys::generate(7);
        let input = OutPoint { txid: Hash256::digest(b"x"), vout: 0 };
        let n = outputs_per_funding_tx();
        let (tx, coins) = funding_tx(&funder, input, 50_000 * 100_000_000, &keys, 5, n, chain).unwrap();
        assert!(tx.size() <= MAX_TX_SIZE && tx.outputs.len() <= MAX_TX_OUTPUTS, "{} bytes", tx.size());
        assert!(tx.verify_input(0, chain));
        assert_eq!(coins.len(), n);
        assert_eq!(coins[0].key, 5);
        assert_eq!(coins[3].key, 1, "keys wrap around");
        let (txid, hex) = payment(&coins[0], &keys, chain);
        let p = Transaction::from_hex(&hex).unwrap();
        assert_eq!(p.txid(), txid);
        assert!(p.verify_input(0, chain));
        assert!(min_fee(p.size()) <= PAYMENT_FEE);
        // An input that cannot pay for the coins is refused, not underflowed.
        assert!(funding_tx(&funder, input, COIN_VALUE, &keys, 0, 10, chain).is_none());
    }

    #[test]
    fn a_steady_coin_is_spent_again_and_again_until_it_cannot_pay_a_fee() {
        let chain = "timecoin-soak";
        let keys = Keys::generate(3);
        let mut coin = Coin { outpoint: OutPoint { txid: Hash256::digest(b"f"), vout: 1 }, key: 2, value: STEADY_COIN };
        let mut hops = 0;
        loop {
            let (txid, hex) = payment(&coin, &keys, chain);
            let tx = Transaction::from_hex(&hex).unwrap();
            assert!(tx.verify_input(0, chain), "hop {hops}");
            assert_eq!(tx.inputs[0].prevout, coin.outpoint);
            match next_coin(&coin, txid, &keys) {
                Some(next) => {
                    // The payment's only output, owned by the next key, is the next coin.
                    assert_eq!(tx.outputs[0].address, keys.addrs[next.key]);
                    assert_eq!((next.outpoint, next.value), (OutPoint { txid, vout: 0 }, tx.outputs[0].value));
                    coin = next;
                    hops += 1;
                }
                None => break,
            }
        }
        assert_eq!(hops, 998, "a coin lasts a thousand fees, less what keeps the last above dust");
        assert_eq!(pool_size(0.1), 8);
        assert_eq!(pool_size(20.0), 400);
        assert_eq!(pool_size(10_000.0), 4_000);
    }

    #[test]
    fn only_devnets_have_derivable_funders() {
        assert!(devnet_funder("timecoin-main", "validator1").is_err());
        let f = devnet_funder("timecoin-devnet-5", "validator2").unwrap();
        assert!(f.addr.matches(&f.key.public()));
    }
}
