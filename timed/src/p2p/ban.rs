//! Offence counting and temporary bans.
//!
//! Every test node (and many testnet nodes) share 127.0.0.1, so an IP says nothing about who
//! misbehaved on loopback. Offenders are therefore keyed by the public key they claimed plus
//! the listen address they announced (or the address we dialled, when no Hello arrived), and
//! by bare IP only when the IP is not a loopback address.

use crate::chain::crypto::PublicKey;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Who an offence is held against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BanKey {
    /// A whole remote host; only used for non-loopback addresses.
    Ip(IpAddr),
    /// A node: its claimed key (if its Hello was read) and its dialable address.
    Node { pubkey: Option<PublicKey>, listen: SocketAddr },
}

impl BanKey {
    /// The keys an offence is recorded under: the node identity when known, the IP when it
    /// means something (not loopback).
    pub(crate) fn for_offence(
        observed: SocketAddr,
        pubkey: Option<PublicKey>,
        listen: Option<SocketAddr>,
    ) -> Vec<BanKey> {
        let mut keys = Vec::with_capacity(2);
        if let Some(listen) = listen {
            keys.push(BanKey::Node { pubkey, listen });
        }
        if !observed.ip().is_loopback() {
            keys.push(BanKey::Ip(observed.ip()));
        }
        keys
    }
}

/// Thresholds of the ban policy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BanPolicy {
    pub threshold: usize,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct BanList {
    offences: HashMap<BanKey, VecDeque<Instant>>,
    bans: HashMap<BanKey, Instant>,
}

/// Bounds memory if a flood of distinct offenders shows up.
const MAX_TRACKED: usize = 4096;

impl BanList {
    /// Records one offence under each key; returns the keys that became banned by it.
    pub(crate) fn offence(&mut self, keys: &[BanKey], policy: BanPolicy, now: Instant) -> Vec<BanKey> {
        self.prune(policy, now);
        let mut banned = Vec::new();
        for key in keys {
            if self.offences.len() >= MAX_TRACKED && !self.offences.contains_key(key) {
                continue;
            }
            let times = self.offences.entry(*key).or_default();
            times.push_back(now);
            if times.len() >= policy.threshold {
                times.clear();
                self.bans.insert(*key, now + policy.duration);
                banned.push(*key);
            }
        }
        banned
    }

    fn prune(&mut self, policy: BanPolicy, now: Instant) {
        self.bans.retain(|_, until| *until > now);
        self.offences.retain(|_, times| {
            while times.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    fn active(&self, now: Instant) -> impl Iterator<Item = &BanKey> {
        self.bans.iter().filter(move |(_, until)| **until > now).map(|(k, _)| k)
    }

    fn ip_banned(&self, ip: IpAddr, now: Instant) -> bool {
        !ip.is_loopback() && self.active(now).any(|k| *k == BanKey::Ip(ip))
    }

    /// Whether a connection from `observed` may even start its handshake.
    pub(crate) fn refuses_connection(&self, observed: SocketAddr, now: Instant) -> bool {
        self.ip_banned(observed.ip(), now)
    }

    /// Whether a node that claimed `pubkey` and listens on `listen` is banned. A ban recorded
    /// without a key (a dialled address that never said Hello) covers any key there.
    pub(crate) fn refuses_node(&self, pubkey: &PublicKey, listen: SocketAddr, now: Instant) -> bool {
        self.ip_banned(listen.ip(), now)
            || self.active(now).any(|k| match k {
                BanKey::Node { pubkey: p, listen: l } => *l == listen && (p.is_none() || p.as_ref() == Some(pubkey)),
                BanKey::Ip(_) => false,
            })
    }

    /// Whether dialling `addr` is off limits: any node ban on that address, or its IP.
    pub(crate) fn refuses_dial(&self, addr: SocketAddr, now: Instant) -> bool {
        self.ip_banned(addr.ip(), now)
            || self.active(now).any(|k| matches!(k, BanKey::Node { listen, .. } if *listen == addr))
    }

    #[cfg(test)]
    pub(crate) fn banned_keys(&self, now: Instant) -> Vec<BanKey> {
        self.active(now).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BanPolicy =
        BanPolicy { threshold: 3, window: Duration::from_secs(600), duration: Duration::from_secs(60) };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn three_offences_ban_the_node_not_its_neighbours() {
        let mut bans = BanList::default();
        let pk = PublicKey([1; 32]);
        let other = PublicKey([2; 32]);
        let listen = addr("127.0.0.1:4000");
        let keys = BanKey::for_offence(addr("127.0.0.1:55000"), Some(pk), Some(listen));
        assert_eq!(keys.len(), 1, "loopback is never banned by IP");
        let t0 = Instant::now();
        assert!(bans.offence(&keys, POLICY, t0).is_empty());
        assert!(bans.offence(&keys, POLICY, t0).is_empty());
        assert_eq!(bans.offence(&keys, POLICY, t0), keys);
        assert!(bans.refuses_node(&pk, listen, t0));
        assert!(bans.refuses_dial(listen, t0));
        // Same host, other node: unaffected.
        assert!(!bans.refuses_node(&pk, addr("127.0.0.1:4001"), t0));
        assert!(!bans.refuses_node(&other, listen, t0));
        assert!(!bans.refuses_connection(addr("127.0.0.1:55001"), t0));
        // Expires.
        let later = t0 + Duration::from_secs(61);
        assert!(!bans.refuses_node(&pk, listen, later));
        assert!(!bans.refuses_dial(listen, later));
    }

    #[test]
    fn offences_outside_the_window_do_not_count() {
        let mut bans = BanList::default();
        let keys = BanKey::for_offence(addr("10.0.0.9:1234"), None, Some(addr("10.0.0.9:4000")));
        assert_eq!(keys.len(), 2);
        let t0 = Instant::now();
        bans.offence(&keys, POLICY, t0);
        bans.offence(&keys, POLICY, t0 + Duration::from_secs(1));
        assert!(bans.offence(&keys, POLICY, t0 + Duration::from_secs(700)).is_empty());
        let t1 = t0 + Duration::from_secs(701);
        assert_eq!(bans.offence(&keys, POLICY, t1).len(), 0);
        assert_eq!(bans.offence(&keys, POLICY, t1).len(), 2);
        // Non-loopback: the IP is banned, for connections and dials alike.
        assert!(bans.refuses_connection(addr("10.0.0.9:1"), t1));
        assert!(bans.refuses_dial(addr("10.0.0.9:9999"), t1));
        // A key-less node ban covers whoever claims to be there.
        assert!(bans.refuses_node(&PublicKey([7; 32]), addr("10.0.0.9:4000"), t1));
    }
}
