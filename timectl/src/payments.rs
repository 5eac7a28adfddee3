//! A steady stream of real payments for long runs (`stability --load TPS`): open loop, so a
//! slow or dead node does not slow the rate, round-robin over the nodes, each paying the next
//! node's wallet a small amount with `sendtoaddress`. It only counts what was accepted and
//! what was refused; finality is the probes' business.
//!
//! (`timectl bench` has a pre-signed generator built for peak rates on another branch; this one
//! needs nothing but the nodes' wallets, which a deployed network has too.)

use crate::client;
use crate::inventory::Node;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timed::api::TimeRpcClient;
use tokio::sync::{watch, Semaphore};

/// Far above dust, far below any genesis output: hours of load barely move a wallet.
const AMOUNT: f64 = 0.0001;
/// Payments waiting for an answer at once; beyond this a tick is counted as refused.
const IN_FLIGHT: usize = 256;
/// Failures in a row after which a node's client is built anew: a restarted node has a new
/// cookie, and a client kept across its restart has been seen to keep failing.
const REBUILD_AFTER: u32 = 3;

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

/// Runs until `stop` turns true. Node i pays the wallet of node i+1.
pub async fn run(
    nodes: Vec<Node>,
    tps: f64,
    timeout: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let n = nodes.len();
    if n == 0 || tps <= 0.0 {
        return;
    }
    let Ok(mut clients) = nodes.iter().map(|node| client::rpc_client(node, timeout)).collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let fails: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let mut wallets: Vec<Option<String>> = vec![None; n];
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / tps));
    // Open loop: a late tick is not made up for in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let from = k % n;
        let to = (from + 1) % n;
        k += 1;
        if wallets[to].is_none() {
            if let Ok(Ok(s)) = tokio::time::timeout(timeout, clients[to].masternode_status()).await {
                wallets[to] = Some(s.wallet_address);
            }
        }
        let (Some(addr), Ok(permit)) = (wallets[to].clone(), slots.clone().try_acquire_owned()) else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if fails[from].load(Ordering::Relaxed) >= REBUILD_AFTER {
            if let Ok(c) = client::rpc_client(&nodes[from], timeout) {
                clients[from] = c;
            }
            fails[from].store(0, Ordering::Relaxed);
        }
        let c = clients[from].clone();
        let counters = counters.clone();
        let fails = fails.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, c.send_to_address(addr, AMOUNT, None)).await;
            if matches!(r, Ok(Ok(_))) {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                fails[from].store(0, Ordering::Relaxed);
            } else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                fails[from].fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}
