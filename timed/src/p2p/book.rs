//! The address book: every address we may dial, with its reconnect schedule.

use crate::chain::block::ValidatorIndex;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most addresses remembered; gossip beyond this is ignored.
pub(crate) const MAX_ADDRESSES: usize = 4096;
/// A gossiped address that never completed a handshake is forgotten after this many failed
/// dials in a row, so junk from peers does not get retried forever. Seeds and addresses that
/// once worked are kept (and retried at the capped backoff).
const MAX_FAILURES_UNPROVEN: u32 = 8;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `base * 2^(failures-1)`, capped, then scaled by a random factor in [0.5, 1] so that
    /// nodes restarted together do not redial in lockstep.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        raw.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

#[derive(Debug)]
struct Entry {
    /// From `--peers` or added by hand: never forgotten.
    seed: bool,
    /// Validator last reached through this address.
    validator: Option<ValidatorIndex>,
    /// A handshake succeeded through it, or a connected peer announced it as its own: worth
    /// telling others about.
    proven: bool,
    failures: u32,
    next_attempt: Instant,
    /// A dial task (and then the connection it made) owns this address right now.
    dialing: bool,
}

impl Entry {
    fn new(seed: bool, now: Instant) -> Self {
        Entry { seed, validator: None, proven: false, failures: 0, next_attempt: now, dialing: false }
    }
}

#[derive(Debug)]
pub(crate) struct AddrBook {
    entries: HashMap<String, Entry>,
    self_addrs: HashSet<SocketAddr>,
    local: SocketAddr,
}

impl AddrBook {
    pub(crate) fn new(local: SocketAddr) -> Self {
        let mut self_addrs = HashSet::new();
        self_addrs.insert(local);
        AddrBook { entries: HashMap::new(), self_addrs, local }
    }

    /// Our own listening address, as far as we can tell without dialling it.
    pub(crate) fn is_self(&self, addr: &SocketAddr) -> bool {
        if self.self_addrs.contains(addr) {
            return true;
        }
        // Bound to a wildcard or loopback: the same port on a loopback address is us.
        addr.port() == self.local.port()
            && addr.ip().is_loopback()
            && (self.local.ip().is_unspecified() || self.local.ip().is_loopback())
    }

    /// A "host:port" to keep dialling whatever happens.
    pub(crate) fn add_seed(&mut self, target: &str) -> bool {
        if let Ok(a) = target.parse::<SocketAddr>() {
            if self.is_self(&a) {
                return false;
            }
        }
        if let Some(e) = self.entries.get_mut(target) {
            e.seed = true;
            return false;
        }
        self.entries.insert(target.to_string(), Entry::new(true, Instant::now()));
        true
    }

    /// An address a peer told us about. Returns true if it is new.
    pub(crate) fn learn(&mut self, addr: SocketAddr) -> bool {
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() || self.is_self(&addr) {
            return false;
        }
        let key = addr.to_string();
        if self.entries.contains_key(&key) || self.entries.len() >= MAX_ADDRESSES {
            return false;
        }
        self.entries.insert(key, Entry::new(false, Instant::now()));
        true
    }

    /// Records that `addr` reaches `validator` (a successful outbound handshake, or the
    /// listen address an inbound peer announced).
    pub(crate) fn bind(&mut self, addr: &str, validator: ValidatorIndex) {
        if self.entries.len() >= MAX_ADDRESSES && !self.entries.contains_key(addr) {
            return;
        }
        let e = self.entries.entry(addr.to_string()).or_insert_with(|| Entry::new(false, Instant::now()));
        e.validator = Some(validator);
        e.proven = true;
        e.failures = 0;
    }

    /// An address turned out to be our own: never dial it again.
    pub(crate) fn mark_self(&mut self, addr: SocketAddr) {
        self.self_addrs.insert(addr);
        let key = addr.to_string();
        self.entries.remove(&key);
    }

    pub(crate) fn forget(&mut self, target: &str) {
        self.entries.remove(target);
    }

    /// Addresses to dial now. Skips addresses of connected validators, validators already
    /// being dialled, banned or in-flight addresses; picks at most one address per validator.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        connected: impl Fn(ValidatorIndex) -> bool,
        banned: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut busy: HashSet<ValidatorIndex> =
            self.entries.values().filter(|e| e.dialing).filter_map(|e| e.validator).collect();
        let mut out = Vec::new();
        for (target, e) in self.entries.iter_mut() {
            if e.dialing || e.next_attempt > now {
                continue;
            }
            if let Some(v) = e.validator {
                if connected(v) || busy.contains(&v) {
                    continue;
                }
            }
            if banned(target) {
                continue;
            }
            if let Some(v) = e.validator {
                busy.insert(v);
            }
            e.dialing = true;
            out.push(target.clone());
        }
        out
    }

    /// A dial (or its handshake) failed: back off.
    pub(crate) fn dial_failed(&mut self, target: &str, backoff: Backoff) {
        let Some(e) = self.entries.get_mut(target) else {
            return;
        };
        e.dialing = false;
        e.failures = e.failures.saturating_add(1);
        if !e.seed && !e.proven && e.failures >= MAX_FAILURES_UNPROVEN {
            self.entries.remove(target);
            return;
        }
        e.next_attempt = Instant::now() + backoff.delay(e.failures);
    }

    /// A connection made by dialling `target` ended after `lived`. Short-lived sessions count
    /// as failures, so a peer that accepts and drops us at once is not redialled in a loop.
    pub(crate) fn session_ended(&mut self, target: &str, lived: Duration, backoff: Backoff) {
        let Some(e) = self.entries.get_mut(target) else {
            return;
        };
        if lived >= backoff.max {
            e.failures = 0;
        }
        e.dialing = false;
        e.failures = e.failures.saturating_add(1);
        e.next_attempt = Instant::now() + backoff.delay(e.failures);
    }

    /// `validator` disconnected: its known addresses become dialable again after a short
    /// pause (not at once, to let the peer redial us first if it is the one that restarts).
    pub(crate) fn validator_lost(&mut self, validator: ValidatorIndex, backoff: Backoff) {
        let at = Instant::now() + backoff.delay(1);
        for e in self.entries.values_mut() {
            if e.validator == Some(validator) && !e.dialing {
                e.next_attempt = e.next_attempt.max(at);
            }
        }
    }

    /// Dialable addresses to share in a `Peers` reply.
    pub(crate) fn shareable(&self, limit: usize) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, e)| e.proven && k.parse::<SocketAddr>().is_ok())
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn failures(&self, target: &str) -> Option<u32> {
        self.entries.get(target).map(|e| e.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { base: Duration::from_millis(250), max: Duration::from_secs(10) };

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        for _ in 0..50 {
            let d1 = B.delay(1);
            assert!(d1 >= Duration::from_millis(125) && d1 <= Duration::from_millis(250));
            let d3 = B.delay(3);
            assert!(d3 >= Duration::from_millis(500) && d3 <= Duration::from_millis(1000));
            let d = B.delay(40);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    #[test]
    fn due_skips_self_connected_and_in_flight() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut book = AddrBook::new(local);
        assert!(!book.learn(local));
        assert!(!book.learn("[::1]:4000".parse().unwrap()), "same port on loopback is us");
        assert!(book.learn("127.0.0.1:4001".parse().unwrap()));
        assert!(!book.learn("127.0.0.1:4001".parse().unwrap()));
        assert!(book.learn("127.0.0.1:4002".parse().unwrap()));
        book.bind("127.0.0.1:4002", 2);
        assert!(book.add_seed("localhost:4003"));
        let now = Instant::now();
        let mut due = book.due(now, |v| v == 2, |_| false);
        due.sort();
        assert_eq!(due, vec!["127.0.0.1:4001".to_string(), "localhost:4003".to_string()]);
        assert!(book.due(now, |_| false, |_| false).contains(&"127.0.0.1:4002".to_string()));
        assert!(book.due(now, |_| false, |_| false).is_empty(), "everything is in flight");
        book.dial_failed("127.0.0.1:4001", B);
        assert!(book.due(Instant::now(), |_| false, |_| false).is_empty(), "backing off");
        assert_eq!(book.shareable(10), vec!["127.0.0.1:4002".to_string()]);
    }

    #[test]
    fn unproven_addresses_are_forgotten_seeds_are_not() {
        let mut book = AddrBook::new("127.0.0.1:4000".parse().unwrap());
        book.learn("127.0.0.1:5000".parse().unwrap());
        book.add_seed("127.0.0.1:5001");
        for _ in 0..MAX_FAILURES_UNPROVEN {
            book.dial_failed("127.0.0.1:5000", B);
            book.dial_failed("127.0.0.1:5001", B);
        }
        assert_eq!(book.len(), 1);
        assert_eq!(book.failures("127.0.0.1:5001"), Some(MAX_FAILURES_UNPROVEN));
    }
}
