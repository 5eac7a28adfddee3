//! Masternode liveness. Every validator signs a heartbeat each interval; other validators
//! witness it with signed attestations. A heartbeat is *verified* once enough distinct
//! witnesses attested it, and a validator is *active* while its heartbeats keep arriving.
//!
//! Signatures are checked by the caller before anything reaches this tracker, and time is
//! passed in (local milliseconds), so the tracker is a plain state machine.

use crate::chain::{Hash256, ValidatorIndex};
use crate::consensus::messages::{Attestation, Heartbeat};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Missed intervals after which a validator counts as inactive.
pub const INACTIVE_AFTER_INTERVALS: u64 = 3;

/// Attestations held for a heartbeat not seen yet (gossip may deliver them first), per
/// validator. Bounded so a peer cannot grow memory with attestations for made-up sequences.
const MAX_PENDING_PER_VALIDATOR: usize = 64;

/// The usual witness requirement: three, or everyone else in a smaller network.
pub fn default_min_witnesses(n_validators: usize) -> usize {
    3.min(n_validators.saturating_sub(1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    Active,
    Inactive,
}

impl Liveness {
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Active => "active",
            Liveness::Inactive => "inactive",
        }
    }
}

/// What became of an attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestationOutcome {
    /// Counted; `verified_now` when it was the one that completed verification.
    Counted { verified_now: bool },
    /// This witness already attested this heartbeat.
    Duplicate,
    /// Held until the heartbeat itself arrives.
    Pending,
    /// A validator attesting its own heartbeat proves nothing.
    SelfAttestation,
    /// Subject or witness is not a validator.
    UnknownValidator,
    /// The digest differs from the heartbeat we hold for that sequence.
    DigestMismatch,
    /// Too old: that heartbeat is no longer in the history.
    Stale,
}

/// One heartbeat as kept for getheartbeathistory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatEntry {
    pub validator: ValidatorIndex,
    pub sequence: u64,
    /// As signed by the sender.
    pub timestamp_ms: u64,
    /// Local time it arrived.
    pub received_ms: u64,
    pub digest: Hash256,
    /// Distinct witnesses, sorted.
    pub witnesses: Vec<ValidatorIndex>,
    pub verified: bool,
}

/// Per-validator view for masternodelist / getattestationstats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorLiveness {
    pub validator: ValidatorIndex,
    pub status: Liveness,
    pub last_seq: Option<u64>,
    /// Sender's timestamp of the last heartbeat.
    pub last_timestamp_ms: Option<u64>,
    /// Local time the last heartbeat arrived.
    pub last_received_ms: Option<u64>,
    pub heartbeats: u64,
    pub verified: u64,
}

impl ValidatorLiveness {
    pub fn unverified(&self) -> u64 {
        self.heartbeats - self.verified
    }
}

/// Totals for getattestationstats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// New heartbeats accepted.
    pub heartbeats_received: u64,
    /// Replays and heartbeats older than the last one seen.
    pub heartbeats_ignored: u64,
    /// Attestations counted towards a heartbeat (pending ones once applied).
    pub attestations_received: u64,
    /// Duplicates, self-attestations, unknown validators, digest mismatches and stale ones.
    pub invalid_rejected: u64,
    /// Heartbeats that reached the witness threshold.
    pub verified_total: u64,
}

#[derive(Default)]
struct ValidatorState {
    last_seq: Option<u64>,
    last_timestamp_ms: Option<u64>,
    last_received_ms: Option<u64>,
    heartbeats: u64,
    verified: u64,
    /// Newest last.
    history: VecDeque<HeartbeatEntry>,
    /// (sequence) -> digest and witnesses seen before the heartbeat.
    pending: BTreeMap<u64, (Hash256, BTreeSet<ValidatorIndex>)>,
}

pub struct HeartbeatTracker {
    interval_ms: u64,
    min_witnesses: usize,
    history_len: usize,
    validators: Vec<ValidatorState>,
    stats: HeartbeatStats,
}

impl HeartbeatTracker {
    /// `min_witnesses` is usually [`default_min_witnesses`]; `history_len` is how many
    /// heartbeats are kept per validator (at least one is).
    pub fn new(n_validators: usize, interval_ms: u64, min_witnesses: usize, history_len: usize) -> Self {
        HeartbeatTracker {
            interval_ms,
            min_witnesses,
            history_len: history_len.max(1),
            validators: (0..n_validators).map(|_| ValidatorState::default()).collect(),
            stats: HeartbeatStats::default(),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    pub fn min_witnesses(&self) -> usize {
        self.min_witnesses
    }

    pub fn stats(&self) -> &HeartbeatStats {
        &self.stats
    }

    /// Records a heartbeat whose signature the caller checked. True when it is new; replays
    /// and sequences not above the last one seen are ignored (so a captured heartbeat cannot
    /// keep a dead validator looking alive).
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> bool {
        let min_witnesses = self.min_witnesses;
        let history_len = self.history_len;
        let Some(st) = self.validators.get_mut(hb.validator as usize) else {
            self.stats.heartbeats_ignored += 1;
            return false;
        };
        if st.last_seq.is_some_and(|last| hb.sequence <= last) {
            self.stats.heartbeats_ignored += 1;
            return false;
        }
        st.last_seq = Some(hb.sequence);
        st.last_timestamp_ms = Some(hb.timestamp_ms);
        st.last_received_ms = Some(now_ms);
        st.heartbeats += 1;
        self.stats.heartbeats_received += 1;

        let digest = hb.digest();
        let mut entry = HeartbeatEntry {
            validator: hb.validator,
            sequence: hb.sequence,
            timestamp_ms: hb.timestamp_ms,
            received_ms: now_ms,
            digest,
            witnesses: Vec::new(),
            verified: false,
        };
        // Attestations that overtook the heartbeat count now, if they attest this exact one.
        let pending = std::mem::take(&mut st.pending);
        for (seq, (d, witnesses)) in pending {
            if seq > hb.sequence {
                st.pending.insert(seq, (d, witnesses));
            } else if seq == hb.sequence && d == digest {
                self.stats.attestations_received += witnesses.len() as u64;
                entry.witnesses = witnesses.into_iter().collect();
            } else {
                self.stats.invalid_rejected += witnesses.len() as u64;
            }
        }
        if entry.witnesses.len() >= min_witnesses {
            entry.verified = true;
            st.verified += 1;
            self.stats.verified_total += 1;
        }
        st.history.push_back(entry);
        while st.history.len() > history_len {
            st.history.pop_front();
        }
        true
    }

    /// Records a witness's attestation (signature checked by the caller). Each witness counts
    /// once per heartbeat, and never for itself.
    pub fn on_attestation(&mut self, a: &Attestation, _now_ms: u64) -> AttestationOutcome {
        let outcome = self.apply_attestation(a);
        match outcome {
            AttestationOutcome::Counted { verified_now } => {
                self.stats.attestations_received += 1;
                if verified_now {
                    self.stats.verified_total += 1;
                }
            }
            AttestationOutcome::Pending => {}
            _ => self.stats.invalid_rejected += 1,
        }
        outcome
    }

    fn apply_attestation(&mut self, a: &Attestation) -> AttestationOutcome {
        let n = self.validators.len();
        if a.subject as usize >= n || a.witness as usize >= n {
            return AttestationOutcome::UnknownValidator;
        }
        if a.subject == a.witness {
            return AttestationOutcome::SelfAttestation;
        }
        let min_witnesses = self.min_witnesses;
        let st = &mut self.validators[a.subject as usize];
        if let Some(entry) = st.history.iter_mut().rev().find(|e| e.sequence == a.sequence) {
            if entry.digest != a.heartbeat_digest {
                return AttestationOutcome::DigestMismatch;
            }
            let Err(pos) = entry.witnesses.binary_search(&a.witness) else {
                return AttestationOutcome::Duplicate;
            };
            entry.witnesses.insert(pos, a.witness);
            let verified_now = !entry.verified && entry.witnesses.len() >= min_witnesses;
            if verified_now {
                entry.verified = true;
                st.verified += 1;
            }
            return AttestationOutcome::Counted { verified_now };
        }
        if st.last_seq.is_some_and(|last| a.sequence <= last) {
            return AttestationOutcome::Stale;
        }
        // Ahead of the heartbeat: hold it, newest sequences first when space runs out.
        if let Some((d, witnesses)) = st.pending.get_mut(&a.sequence) {
            if *d != a.heartbeat_digest {
                return AttestationOutcome::DigestMismatch;
            }
            return if witnesses.insert(a.witness) {
                AttestationOutcome::Pending
            } else {
                AttestationOutcome::Duplicate
            };
        }
        if st.pending.len() >= MAX_PENDING_PER_VALIDATOR {
            let lowest = *st.pending.keys().next().expect("non-empty");
            if a.sequence < lowest {
                return AttestationOutcome::Stale;
            }
            st.pending.remove(&lowest);
        }
        st.pending.insert(a.sequence, (a.heartbeat_digest, BTreeSet::from([a.witness])));
        AttestationOutcome::Pending
    }

    /// Whether that heartbeat (still in the history) reached the witness threshold.
    pub fn is_verified(&self, validator: ValidatorIndex, seq: u64) -> bool {
        self.validators
            .get(validator as usize)
            .and_then(|st| st.history.iter().find(|e| e.sequence == seq))
            .is_some_and(|e| e.verified)
    }

    /// Active while a heartbeat arrived within the last three intervals (by local clock, so a
    /// sender's skewed timestamp cannot keep it alive); never seen means inactive.
    pub fn status(&self, validator: ValidatorIndex, now_ms: u64) -> Liveness {
        let window = self.interval_ms.saturating_mul(INACTIVE_AFTER_INTERVALS);
        match self.validators.get(validator as usize).and_then(|st| st.last_received_ms) {
            Some(t) if now_ms.saturating_sub(t) < window => Liveness::Active,
            _ => Liveness::Inactive,
        }
    }

    /// Active validators, ascending.
    pub fn active_set(&self, now_ms: u64) -> Vec<ValidatorIndex> {
        (0..self.validators.len() as ValidatorIndex).filter(|&v| self.status(v, now_ms) == Liveness::Active).collect()
    }

    pub fn validator(&self, validator: ValidatorIndex, now_ms: u64) -> Option<ValidatorLiveness> {
        let st = self.validators.get(validator as usize)?;
        Some(ValidatorLiveness {
            validator,
            status: self.status(validator, now_ms),
            last_seq: st.last_seq,
            last_timestamp_ms: st.last_timestamp_ms,
            last_received_ms: st.last_received_ms,
            heartbeats: st.heartbeats,
            verified: st.verified,
        })
    }

    /// (sequence, sender's timestamp in ms) of the last heartbeat.
    pub fn last(&self, validator: ValidatorIndex) -> Option<(u64, u64)> {
        let st = self.validators.get(validator as usize)?;
        Some((st.last_seq?, st.last_timestamp_ms?))
    }

    /// Heartbeats of this validator that reached the witness threshold.
    pub fn verified_count(&self, validator: ValidatorIndex) -> u64 {
        self.validators.get(validator as usize).map_or(0, |st| st.verified)
    }

    /// Heartbeats of this validator received but (not yet) verified.
    pub fn unverified_count(&self, validator: ValidatorIndex) -> u64 {
        self.validators.get(validator as usize).map_or(0, |st| st.heartbeats - st.verified)
    }

    pub fn validators(&self, now_ms: u64) -> Vec<ValidatorLiveness> {
        (0..self.validators.len() as ValidatorIndex).filter_map(|v| self.validator(v, now_ms)).collect()
    }

    /// The kept heartbeats (`history_len` per validator), newest first: of one validator, or
    /// of all of them ordered by arrival.
    pub fn history(&self, validator: Option<ValidatorIndex>) -> Vec<HeartbeatEntry> {
        match validator {
            Some(v) => {
                self.validators.get(v as usize).map(|st| st.history.iter().rev().cloned().collect()).unwrap_or_default()
            }
            None => {
                let mut all: Vec<&HeartbeatEntry> = self.validators.iter().flat_map(|st| st.history.iter()).collect();
                all.sort_by(|a, b| b.received_ms.cmp(&a.received_ms).then(a.validator.cmp(&b.validator)));
                all.into_iter().cloned().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Keypair;

    const CHAIN: &str = "test";

    fn key(i: ValidatorIndex) -> Keypair {
        Keypair::insecure_from_label(&format!("hb-{i}"))
    }

    fn hb(v: ValidatorIndex, seq: u64) -> Heartbeat {
        Heartbeat::new_signed(v, seq, 1_000 * seq, &key(v), CHAIN)
    }

    fn att(h: &Heartbeat, w: ValidatorIndex) -> Attestation {
        Attestation::new_signed(h, w, &key(w), CHAIN)
    }

    #[test]
    fn replays_and_old_sequences_are_ignored() {
        let mut t = HeartbeatTracker::new(4, 1000, 3, 10);
        assert!(t.on_heartbeat(&hb(0, 5), 0));
        assert!(!t.on_heartbeat(&hb(0, 5), 1));
        assert!(!t.on_heartbeat(&hb(0, 4), 2));
        assert!(t.on_heartbeat(&hb(0, 7), 3));
        assert!(!t.on_heartbeat(&hb(9, 1), 3), "unknown validator");
        assert_eq!(t.stats().heartbeats_received, 2);
        assert_eq!(t.stats().heartbeats_ignored, 3);
        assert_eq!(t.validator(0, 3).unwrap().last_seq, Some(7));
    }

    #[test]
    fn verification_needs_distinct_other_witnesses() {
        let mut t = HeartbeatTracker::new(5, 1000, default_min_witnesses(5), 10);
        let h = hb(0, 1);
        t.on_heartbeat(&h, 0);
        assert_eq!(t.on_attestation(&att(&h, 0), 0), AttestationOutcome::SelfAttestation);
        assert_eq!(t.on_attestation(&att(&h, 1), 0), AttestationOutcome::Counted { verified_now: false });
        assert_eq!(t.on_attestation(&att(&h, 1), 0), AttestationOutcome::Duplicate);
        assert_eq!(t.on_attestation(&att(&h, 2), 0), AttestationOutcome::Counted { verified_now: false });
        assert!(!t.is_verified(0, 1));
        assert_eq!(t.on_attestation(&att(&h, 3), 0), AttestationOutcome::Counted { verified_now: true });
        assert!(t.is_verified(0, 1));
        assert_eq!(t.on_attestation(&att(&h, 4), 0), AttestationOutcome::Counted { verified_now: false });
        assert_eq!(t.stats().verified_total, 1);
        assert_eq!(t.stats().attestations_received, 4);
        assert_eq!(t.stats().invalid_rejected, 2);
        let rec = &t.history(Some(0))[0];
        assert_eq!(rec.witnesses, vec![1, 2, 3, 4]);
        assert!(rec.verified);
        let v = t.validator(0, 0).unwrap();
        assert_eq!((v.heartbeats, v.verified, v.unverified()), (1, 1, 0));
        assert_eq!((t.verified_count(0), t.unverified_count(0)), (1, 0));
        assert_eq!(t.last(0), Some((1, 1000)));
        assert_eq!(t.last(1), None);
    }

    #[test]
    fn attestation_must_match_the_heartbeat() {
        let mut t = HeartbeatTracker::new(4, 1000, 3, 10);
        let h = hb(0, 1);
        t.on_heartbeat(&h, 0);
        let mut forged = att(&h, 1);
        forged.heartbeat_digest = Hash256::digest(b"other");
        assert_eq!(t.on_attestation(&forged, 0), AttestationOutcome::DigestMismatch);
        let mut unknown = att(&h, 1);
        unknown.witness = 7;
        assert_eq!(t.on_attestation(&unknown, 0), AttestationOutcome::UnknownValidator);
        // An older sequence that was never seen is stale, not pending.
        t.on_heartbeat(&hb(0, 5), 1);
        assert_eq!(t.on_attestation(&att(&hb(0, 3), 1), 1), AttestationOutcome::Stale);
    }

    #[test]
    fn attestations_may_arrive_before_the_heartbeat() {
        let mut t = HeartbeatTracker::new(4, 1000, 3, 10);
        let h = hb(2, 9);
        for w in [0, 1, 3] {
            assert_eq!(t.on_attestation(&att(&h, w), 0), AttestationOutcome::Pending);
        }
        assert_eq!(t.on_attestation(&att(&h, 0), 0), AttestationOutcome::Duplicate);
        assert!(!t.is_verified(2, 9));
        t.on_heartbeat(&h, 5);
        assert!(t.is_verified(2, 9));
        assert_eq!(t.stats().verified_total, 1);
        assert_eq!(t.stats().attestations_received, 3);
        // Pending attestations for a different heartbeat under the same sequence do not count.
        let other = Heartbeat::new_signed(1, 4, 77, &key(1), CHAIN);
        t.on_attestation(&att(&other, 0), 5);
        t.on_heartbeat(&hb(1, 4), 6);
        assert_eq!(t.history(Some(1))[0].witnesses, Vec::<ValidatorIndex>::new());
    }

    #[test]
    fn small_networks_need_fewer_witnesses() {
        assert_eq!(default_min_witnesses(1), 0);
        assert_eq!(default_min_witnesses(2), 1);
        assert_eq!(default_min_witnesses(3), 2);
        assert_eq!(default_min_witnesses(10), 3);
        let mut t = HeartbeatTracker::new(1, 1000, default_min_witnesses(1), 4);
        t.on_heartbeat(&hb(0, 1), 0);
        assert!(t.is_verified(0, 1));
    }

    #[test]
    fn inactive_after_three_missed_intervals() {
        let mut t = HeartbeatTracker::new(3, 1000, 2, 10);
        assert_eq!(t.status(0, 0), Liveness::Inactive, "never seen");
        t.on_heartbeat(&hb(0, 1), 10_000);
        t.on_heartbeat(&hb(1, 1), 11_000);
        assert_eq!(t.status(0, 12_999), Liveness::Active);
        assert_eq!(t.status(0, 13_000), Liveness::Inactive);
        assert_eq!(t.active_set(12_999), vec![0, 1]);
        assert_eq!(t.active_set(13_500), vec![1]);
        // A replay does not revive it.
        assert!(!t.on_heartbeat(&hb(0, 1), 20_000));
        assert_eq!(t.status(0, 20_000), Liveness::Inactive);
        t.on_heartbeat(&hb(0, 2), 20_000);
        assert_eq!(t.status(0, 20_000), Liveness::Active);
        assert_eq!(t.validators(20_000).len(), 3);
    }

    #[test]
    fn history_is_bounded_and_newest_first() {
        let mut t = HeartbeatTracker::new(2, 1000, 1, 3);
        for s in 1..=5 {
            t.on_heartbeat(&hb(0, s), s * 1000);
            t.on_heartbeat(&hb(1, s), s * 1000 + 500);
        }
        let seqs: Vec<u64> = t.history(Some(0)).iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        let all: Vec<(ValidatorIndex, u64)> =
            t.history(None).iter().take(4).map(|e| (e.validator, e.sequence)).collect();
        assert_eq!(all, vec![(1, 5), (0, 5), (1, 4), (0, 4)]);
        // Attesting an evicted heartbeat is stale.
        assert_eq!(t.on_attestation(&att(&hb(0, 1), 1), 9_000), AttestationOutcome::Stale);
        assert!(t.history(Some(7)).is_empty());
    }
}
