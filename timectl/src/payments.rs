//! A steady stream of real payments for long runs (`stability --load TPS`): open loop, so a
//! slow or dead node does not slow the rate, round-robin over the nodes, each paying the next
//! node's wallet a small amount with `sendtoaddress`. It only counts what was accepted and
//! what was refused; finality is the probes' business.
//!
//! (`timectl bench` has a pre-signed generator built for peak rates on another branch; this one
//! needs nothing but the nodes' wallets, which a deployed network has too.)

use jsonrpsee::http_client::HttpClient;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timed::api::TimeRpcClient;
use tokio::sync::{watch, Semaphore};

/// Far above dust, far below any genesis output: hours of load barely move a wallet.
const AMOUNT: f64 = 0.0001;
/// Payments waiting for an answer at once; beyond this a tick is counted as refused.
const IN_FLIGHT: usize = 256;

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

/// Runs until `stop` turns true. `clients[i]` pays the wallet of node i+1.
pub async fn run(
    clients: Vec<HttpClient>,
    tps: f64,
    timeout: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let n = clients.len();
    if n == 0 || tps <= 0.0 {
        return;
    }
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
        let c = clients[from].clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, c.send_to_address(addr, AMOUNT, None)).await;
            let counter = if matches!(r, Ok(Ok(_))) { &counters.accepted } else { &counters.refused };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
