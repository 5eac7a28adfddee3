//! Snowball finality for transactions (the Avalanche family, one conflict set per spent
//! output). The node samples `k` validators, asks whether they prefer each undecided
//! transaction, and feeds the yes counts to [`Snowball::record_poll`]; a transaction is final
//! once it has been the confident majority's choice `beta` polls in a row in every set it
//! belongs to.
//!
//! Pure state: no I/O, no clock reads (callers pass `Instant`s), no signatures.

use crate::chain::{OutPoint, Txid};
use crate::consensus::messages::{Preference, MAX_POLL_TXIDS};
use foldhash::{HashMap, HashMapExt};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How many rejected txids are remembered so polls about them keep getting a firm No.
const REJECTED_MEMORY: usize = 65_536;

/// Snowball parameters.
///
/// The defaults are sound for the 5–10 node testnets this chain runs: `k` is clamped to the
/// validators available to sample (n − 1, since a node does not poll itself), and both alphas
/// scale with it, so with 5 nodes `k = 4, α = 3`, and with 10 nodes `k = 9, α_pref = 5,
/// α_conf = 7`. `alpha_preference` is a bare majority of `k` (11 of 20) rather than 15: with
/// `k = n − 1` every poll asks everyone, so there is no sampling noise to break a tie, and a
/// preference threshold above a majority can leave a network split 4/3 over a double spend
/// stuck until expiry (see the `three_quarter_preference_can_deadlock` test). Safety rests on
/// `alpha_confidence` (75% of the sample) and `beta` consecutive successes, as in Avalanche,
/// so lowering the preference threshold only buys liveness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnowballParams {
    /// Sample size.
    pub k: usize,
    /// Yes votes that strengthen a preference.
    pub alpha_preference: usize,
    /// Yes votes that count towards confidence.
    pub alpha_confidence: usize,
    /// Consecutive confident polls that finalize.
    pub beta: u32,
    pub poll_interval_ms: u64,
    pub max_concurrent_polls: usize,
    pub poll_timeout_ms: u64,
    /// Most txids in one poll.
    pub batch_max: usize,
    /// Undecided transactions older than this are dropped.
    pub expiry_secs: u64,
}

impl Default for SnowballParams {
    fn default() -> Self {
        SnowballParams {
            k: 20,
            alpha_preference: 11,
            alpha_confidence: 15,
            beta: 8,
            // 8 polls in a row at 20 ms: a 160 ms floor (docs/consensus.md: same safety).
            poll_interval_ms: 20,
            max_concurrent_polls: 4,
            poll_timeout_ms: 1000,
            batch_max: 1024,
            expiry_secs: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnowballParamsError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("alpha_preference {alpha} must be more than half of k = {k} and at most k")]
    AlphaPreference { alpha: usize, k: usize },
    #[error("alpha_confidence {alpha} must be between alpha_preference {alpha_preference} and k = {k}")]
    AlphaConfidence { alpha: usize, alpha_preference: usize, k: usize },
    #[error("beta must be at least 1")]
    ZeroBeta,
    #[error("batch_max must be between 1 and {max}, got {got}")]
    BatchMax { got: usize, max: usize },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl SnowballParams {
    pub fn validate(&self) -> Result<(), SnowballParamsError> {
        if self.k == 0 {
            return Err(SnowballParamsError::ZeroK);
        }
        if self.alpha_preference <= self.k / 2 || self.alpha_preference > self.k {
            return Err(SnowballParamsError::AlphaPreference { alpha: self.alpha_preference, k: self.k });
        }
        if self.alpha_confidence < self.alpha_preference || self.alpha_confidence > self.k {
            return Err(SnowballParamsError::AlphaConfidence {
                alpha: self.alpha_confidence,
                alpha_preference: self.alpha_preference,
                k: self.k,
            });
        }
        if self.beta == 0 {
            return Err(SnowballParamsError::ZeroBeta);
        }
        if self.batch_max == 0 || self.batch_max > MAX_POLL_TXIDS {
            return Err(SnowballParamsError::BatchMax { got: self.batch_max, max: MAX_POLL_TXIDS });
        }
        for (name, v) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("max_concurrent_polls", self.max_concurrent_polls as u64),
            ("poll_timeout_ms", self.poll_timeout_ms),
            ("expiry_secs", self.expiry_secs),
        ] {
            if v == 0 {
                return Err(SnowballParamsError::Zero(name));
            }
        }
        Ok(())
    }

    /// `(k, alpha_preference, alpha_confidence)` for a network with `available` validators to
    /// sample: `k` clamped to them, alphas scaled by `k / self.k` rounding up, kept within
    /// `floor(k/2)+1 ..= k`. All zero when there is nobody to ask.
    pub fn effective(&self, available: usize) -> (usize, usize, usize) {
        let k = self.k.min(available);
        if k == 0 || self.k == 0 {
            return (0, 0, 0);
        }
        let scale = |alpha: usize| (alpha * k).div_ceil(self.k).clamp(k / 2 + 1, k);
        (k, scale(self.alpha_preference), scale(self.alpha_confidence))
    }
}

/// What [`Snowball::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Now undecided and polled.
    Inserted,
    /// Already tracked (undecided or accepted).
    Known,
    /// Conflicts with an accepted transaction, spends an output of a rejected one, or was
    /// rejected before.
    Rejected,
    /// Spends nothing, so there is no conflict to resolve; not tracked.
    NoInputs,
}

/// Transactions decided by one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub accepted: Vec<Txid>,
    pub rejected: Vec<Txid>,
}

impl Decisions {
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty() && self.rejected.is_empty()
    }
}

/// Counters and sizes for getavalanchestatus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnowballStats {
    pub polls_recorded: u64,
    /// Accepted by polling.
    pub finalized_total: u64,
    /// Accepted because a committed block contained them.
    pub accepted_external_total: u64,
    pub rejected_total: u64,
    pub expired_total: u64,
    pub undecided: usize,
    /// Spent outputs with more than one live spender.
    pub conflict_sets: usize,
    /// Undecided plus accepted transactions still held.
    pub tracked: usize,
}

struct TxEntry {
    /// Spent outputs, sorted and distinct.
    inputs: Vec<OutPoint>,
    seq: u64,
    first_seen: Instant,
    accepted: bool,
    /// Has never shared a conflict set and has never had an undecided parent: then it is the
    /// preference of each of its sets (nothing can take that from a lone member) and has no
    /// ancestor to walk, so a poll answer needs no look-up beyond this entry, and a poll's
    /// votes touch only `strength` and `count` here. Almost every payment is such; cleared
    /// for good (see [`Snowball::unplain`]) the first time either stops holding.
    plain: bool,
    /// While `plain`: its strength and streak, the same in each of its sets, which are not
    /// kept up to date meanwhile.
    strength: u32,
    count: u32,
}

struct Member {
    txid: Txid,
    strength: u32,
    seq: u64,
}

/// All spenders of one output, with Snowball's per-set state.
struct ConflictSet {
    members: Vec<Member>,
    preference: Txid,
    /// The member whose confident streak `count` measures.
    last: Option<Txid>,
    count: u32,
}

impl ConflictSet {
    fn member_mut(&mut self, txid: &Txid) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.txid == *txid)
    }

    fn strength(&self, txid: &Txid) -> u32 {
        self.members.iter().find(|m| m.txid == *txid).map_or(0, |m| m.strength)
    }

    /// Drops a member; if it was preferred, the strongest remaining (earliest on a tie) takes
    /// over with a fresh streak. False when the set is now empty.
    fn remove(&mut self, txid: &Txid) -> bool {
        self.members.retain(|m| m.txid != *txid);
        if self.last == Some(*txid) {
            self.last = None;
            self.count = 0;
        }
        if self.preference == *txid {
            let Some(best) = self.members.iter().max_by(|a, b| a.strength.cmp(&b.strength).then(b.seq.cmp(&a.seq)))
            else {
                return false;
            };
            self.preference = best.txid;
            self.last = None;
            self.count = 0;
        }
        !self.members.is_empty()
    }
}

pub struct Snowball {
    params: SnowballParams,
    txs: HashMap<Txid, TxEntry>,
    /// Every poll answer looks up each input's set: hashed, not ordered (a B-tree's
    /// comparisons of 36-byte keys were the largest cost of answering polls).
    sets: HashMap<OutPoint, ConflictSet>,
    /// Which outputs of a transaction have a set, to find its children (spenders) without
    /// an ordered map.
    spent_outputs: HashMap<Txid, Vec<u32>>,
    /// Undecided transactions by arrival.
    undecided: BTreeMap<u64, Txid>,
    next_seq: u64,
    rejected: HashMap<Txid, u64>,
    rejected_order: VecDeque<(u64, Txid)>,
    stats: SnowballStats,
    /// Tests turn the `plain` shortcut off, to compare against the general bookkeeping.
    #[cfg(test)]
    shortcuts: bool,
}

impl Snowball {
    pub fn new(params: SnowballParams) -> Self {
        Snowball {
            params,
            txs: HashMap::new(),
            sets: HashMap::new(),
            spent_outputs: HashMap::new(),
            undecided: BTreeMap::new(),
            next_seq: 0,
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
            stats: SnowballStats::default(),
            #[cfg(test)]
            shortcuts: true,
        }
    }

    pub fn params(&self) -> &SnowballParams {
        &self.params
    }

    /// See [`SnowballParams::effective`].
    pub fn effective(&self, available: usize) -> (usize, usize, usize) {
        self.params.effective(available)
    }

    /// Transactions not yet accepted or rejected.
    pub fn undecided_len(&self) -> usize {
        self.undecided.len()
    }

    pub fn stats(&self) -> SnowballStats {
        SnowballStats {
            undecided: self.undecided.len(),
            conflict_sets: self.sets.values().filter(|s| s.members.len() > 1).count(),
            tracked: self.txs.len(),
            ..self.stats.clone()
        }
    }

    /// Starts tracking a transaction (already validated by the caller). The first spender
    /// seen of an output is that set's initial preference.
    pub fn insert(&mut self, txid: Txid, inputs: &[OutPoint], now: Instant) -> InsertOutcome {
        if self.txs.contains_key(&txid) {
            return InsertOutcome::Known;
        }
        if self.rejected.contains_key(&txid) {
            return InsertOutcome::Rejected;
        }
        let mut inputs = inputs.to_vec();
        inputs.sort_unstable();
        inputs.dedup();
        if inputs.is_empty() {
            return InsertOutcome::NoInputs;
        }
        let doomed = inputs.iter().any(|op| {
            self.rejected.contains_key(&op.txid)
                || self
                    .sets
                    .get(op)
                    .is_some_and(|s| s.members.iter().any(|m| self.txs.get(&m.txid).is_some_and(|e| e.accepted)))
        });
        if doomed {
            self.remember_rejected(txid);
            self.stats.rejected_total += 1;
            return InsertOutcome::Rejected;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut plain = !inputs.iter().any(|op| self.is_undecided(&op.txid));
        let mut not_plain = Vec::new();
        for op in &inputs {
            let set = self.sets.entry(*op).or_insert_with(|| {
                self.spent_outputs.entry(op.txid).or_default().push(op.vout);
                ConflictSet { members: Vec::new(), preference: txid, last: None, count: 0 }
            });
            not_plain.extend(set.members.iter().map(|m| m.txid));
            set.members.push(Member { txid, strength: 0, seq });
        }
        plain &= not_plain.is_empty();
        #[cfg(test)]
        {
            plain &= self.shortcuts;
        }
        // Spenders tracked before their parent (made-up txids, itself included; a node
        // admits a spend of final outputs only) now have an undecided parent.
        if self.spent_outputs.contains_key(&txid) {
            not_plain.extend(self.children(&txid));
        }
        let entry = TxEntry { inputs, seq, first_seen: now, accepted: false, plain, strength: 0, count: 0 };
        self.txs.insert(txid, entry);
        for t in &not_plain {
            self.unplain(t);
        }
        self.undecided.insert(seq, txid);
        InsertOutcome::Inserted
    }

    /// Ends `txid`'s `plain` shortcut: its strength and streak go into its sets, where the
    /// general bookkeeping keeps them from now on. A streak of 0 leaves `last` empty, which
    /// every rule reads as it reads a `last` of its own with a count of 0.
    fn unplain(&mut self, txid: &Txid) {
        let Some(e) = self.txs.get_mut(txid).filter(|e| e.plain) else { return };
        e.plain = false;
        for op in &e.inputs {
            let set = self.sets.get_mut(op).expect("every input of a tracked tx has a set");
            if let Some(m) = set.member_mut(txid) {
                m.strength = e.strength;
            }
            set.last = (e.count > 0).then_some(*txid);
            set.count = e.count;
        }
    }

    /// The answer to a poll: Yes when accepted, or preferred in every conflict set it is in
    /// with every undecided parent preferred too (a spend of a losing transaction's output is
    /// worthless); No when known otherwise or rejected; Unknown when never seen.
    pub fn preference(&self, txid: &Txid) -> Preference {
        match self.txs.get(txid) {
            None if self.rejected.contains_key(txid) => Preference::No,
            None => Preference::Unknown,
            Some(e) if self.strongly_preferred(txid, e) => Preference::Yes,
            Some(_) => Preference::No,
        }
    }

    /// Whether a tracked transaction gets a Yes (see [`Snowball::preference`]); false when
    /// not tracked.
    pub fn is_preferred(&self, txid: &Txid) -> bool {
        self.txs.get(txid).is_some_and(|e| self.strongly_preferred(txid, e))
    }

    /// Tracked: undecided, or accepted and not yet removed.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.txs.contains_key(txid)
    }

    /// `e` is `txid`'s own entry: every poll answer asks, so the caller's lookup is reused.
    fn strongly_preferred(&self, txid: &Txid, e: &TxEntry) -> bool {
        // Payments mostly spend settled outputs, or one undecided parent that spends one
        // undecided parent, and so on: such a chain is walked here without allocating (a stack
        // and a seen-set per answer were most of the cost of answering under load). The walk
        // is bounded by the tracked count, so a cycle of made-up txids (tests) still ends.
        let (mut t, mut e) = (*txid, e);
        for _ in 0..=self.txs.len() {
            if e.accepted || e.plain {
                return true;
            }
            let mut next: Option<(Txid, &TxEntry)> = None;
            for op in &e.inputs {
                if self.sets.get(op).is_none_or(|s| s.preference != t) {
                    return false;
                }
                match (self.txs.get(&op.txid).filter(|p| !p.accepted), next) {
                    (None, _) => {}
                    (Some(p), None) => next = Some((op.txid, p)),
                    (Some(_), Some((n, _))) if n == op.txid => {}
                    // Two undecided parents: the general walk.
                    (Some(_), Some(_)) => return self.ancestors_preferred(t),
                }
            }
            match next {
                None => return true,
                Some((n, p)) => (t, e) = (n, p),
            }
        }
        self.ancestors_preferred(t)
    }

    /// Every undecided transaction `txid` descends from (itself included) is its sets'
    /// preference.
    fn ancestors_preferred(&self, txid: Txid) -> bool {
        let mut stack = vec![txid];
        let mut seen = foldhash::HashSet::default();
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            let Some(e) = self.txs.get(&t) else { continue };
            if e.accepted || e.plain {
                continue;
            }
            for op in &e.inputs {
                match self.sets.get(op) {
                    Some(s) if s.preference == t => {}
                    _ => return false,
                }
                stack.push(op.txid);
            }
        }
        true
    }

    pub fn is_accepted(&self, txid: &Txid) -> bool {
        self.txs.get(txid).is_some_and(|e| e.accepted)
    }

    pub fn is_rejected(&self, txid: &Txid) -> bool {
        self.rejected.contains_key(txid)
    }

    pub fn is_undecided(&self, txid: &Txid) -> bool {
        self.txs.get(txid).is_some_and(|e| !e.accepted)
    }

    /// When the transaction was inserted (kept after acceptance, until removed).
    pub fn first_seen(&self, txid: &Txid) -> Option<Instant> {
        self.txs.get(txid).map(|e| e.first_seen)
    }

    /// Consecutive confident polls: the smallest over its sets (0 in a set where it is not
    /// the preference); `beta` once accepted, 0 when unknown.
    pub fn confidence(&self, txid: &Txid) -> u32 {
        match self.txs.get(txid) {
            None => 0,
            Some(e) if e.accepted => self.params.beta,
            Some(e) if e.plain => e.count,
            Some(e) => e
                .inputs
                .iter()
                .map(|op| match self.sets.get(op) {
                    Some(s) if s.preference == *txid && s.last == Some(*txid) => s.count,
                    _ => 0,
                })
                .min()
                .unwrap_or(0),
        }
    }

    /// Up to `max` (and `batch_max`) undecided txids, oldest first.
    pub fn batch(&self, max: usize) -> Vec<Txid> {
        self.batch_where(max, |_| true)
    }

    /// Up to `max` (and `batch_max`) undecided txids for which `wanted` holds, oldest first.
    /// The filter runs before the cap: a poll skips what other polls in flight already ask
    /// about and still fills up with younger transactions.
    pub fn batch_where(&self, max: usize, mut wanted: impl FnMut(&Txid) -> bool) -> Vec<Txid> {
        self.undecided.values().filter(|t| wanted(t)).take(max.min(self.params.batch_max)).copied().collect()
    }

    /// Feeds one poll's yes counts (out of a sample of `k`) with the thresholds from
    /// [`SnowballParams::effective`]. Txids that are no longer undecided are skipped.
    pub fn record_poll(
        &mut self,
        results: &[(Txid, usize)],
        k: usize,
        alpha_preference: usize,
        alpha_confidence: usize,
    ) -> Decisions {
        let mut decisions = Decisions::default();
        self.stats.polls_recorded += 1;
        if k == 0 {
            return decisions;
        }
        // Never let a caller's thresholds drop to where two conflicting transactions could
        // both win a majority of one sample.
        let alpha_pref = alpha_preference.clamp(k / 2 + 1, k);
        let alpha_conf = alpha_confidence.clamp(alpha_pref, k);
        let mut touched = Vec::new();
        for &(txid, yes) in results {
            let yes = yes.min(k);
            let Some(entry) = self.txs.get_mut(&txid) else { continue };
            if entry.accepted {
                continue;
            }
            if entry.plain {
                // What the loop below does in each set of a lone member that is its preference.
                if yes >= alpha_pref {
                    entry.strength += 1;
                }
                entry.count = if yes >= alpha_conf { entry.count + 1 } else { 0 };
                touched.push(txid);
                continue;
            }
            for op in &entry.inputs {
                let set = self.sets.get_mut(op).expect("every input of a tracked tx has a set");
                if yes >= alpha_pref {
                    let member = set.member_mut(&txid).expect("tracked tx is a member of its sets");
                    member.strength += 1;
                    let strength = member.strength;
                    if set.preference != txid && strength > set.strength(&set.preference) {
                        set.preference = txid;
                    }
                }
                if set.preference == txid {
                    if yes >= alpha_conf {
                        if set.last == Some(txid) {
                            set.count += 1;
                        } else {
                            set.last = Some(txid);
                            set.count = 1;
                        }
                    } else {
                        set.count = 0;
                    }
                } else if yes >= alpha_conf {
                    // A confident majority for a rival is evidence against the current
                    // preference's streak, even though only the preference builds one.
                    set.count = 0;
                }
            }
            touched.push(txid);
        }
        self.settle(touched, &mut decisions);
        decisions
    }

    /// Accepts every candidate (and, transitively, waiting children) that has met the rule.
    fn settle(&mut self, mut work: Vec<Txid>, decisions: &mut Decisions) {
        while let Some(txid) = work.pop() {
            if self.ready(&txid) {
                self.accept(txid, false, decisions);
                work.extend(self.children(&txid));
            }
        }
    }

    /// Preferred with a streak of at least `beta` in every set, and no undecided parent.
    fn ready(&self, txid: &Txid) -> bool {
        let Some(e) = self.txs.get(txid) else { return false };
        if e.accepted {
            return false;
        }
        if e.plain {
            return e.count >= self.params.beta;
        }
        e.inputs.iter().all(|op| {
            let set_ok = self
                .sets
                .get(op)
                .is_some_and(|s| s.preference == *txid && s.last == Some(*txid) && s.count >= self.params.beta);
            // A parent still undecided must be accepted first.
            let parent_ok = match self.txs.get(&op.txid) {
                Some(parent) => parent.accepted,
                None => true,
            };
            set_ok && parent_ok
        })
    }

    /// Tracked transactions spending an output of `txid`.
    fn children(&self, txid: &Txid) -> Vec<Txid> {
        let Some(vouts) = self.spent_outputs.get(txid) else { return Vec::new() };
        let mut out: Vec<Txid> = vouts
            .iter()
            .filter_map(|vout| self.sets.get(&OutPoint { txid: *txid, vout: *vout }))
            .flat_map(|s| s.members.iter().map(|m| m.txid))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn accept(&mut self, txid: Txid, external: bool, decisions: &mut Decisions) {
        let Some(entry) = self.txs.get_mut(&txid) else { return };
        entry.accepted = true;
        let seq = entry.seq;
        let inputs = entry.inputs.clone();
        self.undecided.remove(&seq);
        if external {
            self.stats.accepted_external_total += 1;
        } else {
            self.stats.finalized_total += 1;
        }
        decisions.accepted.push(txid);
        let mut losers = Vec::new();
        for op in &inputs {
            if let Some(set) = self.sets.get(op) {
                losers.extend(set.members.iter().map(|m| m.txid).filter(|t| *t != txid));
            }
        }
        self.reject_all(losers, decisions);
        for op in &inputs {
            if let Some(set) = self.sets.get_mut(op) {
                set.preference = txid;
            }
        }
    }

    /// Rejects transactions and everything spending their outputs.
    fn reject_all(&mut self, mut work: Vec<Txid>, decisions: &mut Decisions) {
        while let Some(txid) = work.pop() {
            if !self.txs.contains_key(&txid) {
                continue;
            }
            work.extend(self.children(&txid));
            self.drop_tx(&txid);
            self.remember_rejected(txid);
            self.stats.rejected_total += 1;
            decisions.rejected.push(txid);
        }
    }

    /// Forgets a transaction entirely (its sets re-elect a preference if needed).
    fn drop_tx(&mut self, txid: &Txid) -> bool {
        let Some(entry) = self.txs.remove(txid) else { return false };
        self.undecided.remove(&entry.seq);
        for op in &entry.inputs {
            if let Some(set) = self.sets.get_mut(op) {
                if !set.remove(txid) {
                    self.sets.remove(op);
                    if let Some(vouts) = self.spent_outputs.get_mut(&op.txid) {
                        vouts.retain(|v| *v != op.vout);
                        if vouts.is_empty() {
                            self.spent_outputs.remove(&op.txid);
                        }
                    }
                }
            }
        }
        true
    }

    fn remember_rejected(&mut self, txid: Txid) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.rejected.insert(txid, seq);
        self.rejected_order.push_back((seq, txid));
        while self.rejected_order.len() > REJECTED_MEMORY {
            let (s, t) = self.rejected_order.pop_front().expect("non-empty");
            if self.rejected.get(&t) == Some(&s) {
                self.rejected.remove(&t);
            }
        }
    }

    /// A committed block contained `txid`: accept it and reject its rivals. Insert it first
    /// if it is not tracked, or its rivals cannot be found. A block outranks polling, so a
    /// rival is rejected even if this node had accepted it.
    pub fn accept_external(&mut self, txid: &Txid) -> Decisions {
        let mut decisions = Decisions::default();
        self.rejected.remove(txid);
        if self.is_undecided(txid) {
            self.accept(*txid, true, &mut decisions);
            let children = self.children(txid);
            self.settle(children, &mut decisions);
        }
        decisions
    }

    /// Stops tracking a transaction (for example once its block is deep enough, or when the
    /// mempool evicts it). Its spenders are left alone: the caller removes them too if it must.
    /// Gives memory back after a burst (maps keep their peak capacity otherwise). True if it
    /// shrank anything.
    pub fn shrink_if_sparse(&mut self) -> bool {
        let sparse = |len: usize, cap: usize| cap > 1024 && len < cap / 4;
        let mut shrank = false;
        if sparse(self.txs.len(), self.txs.capacity()) {
            self.txs.shrink_to_fit();
            shrank = true;
        }
        if sparse(self.sets.len(), self.sets.capacity()) {
            self.sets.shrink_to_fit();
            self.spent_outputs.shrink_to_fit();
            shrank = true;
        }
        if sparse(self.rejected.len(), self.rejected.capacity()) {
            self.rejected.shrink_to_fit();
            self.rejected_order.shrink_to_fit();
            shrank = true;
        }
        shrank
    }

    pub fn remove(&mut self, txid: &Txid) -> bool {
        self.drop_tx(txid)
    }

    /// Drops undecided transactions first seen `expiry_secs` or more before `now`, with any
    /// tracked spenders of their outputs, and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<Txid> {
        let ttl = Duration::from_secs(self.params.expiry_secs);
        let mut work: Vec<Txid> = self
            .undecided
            .values()
            .filter(|t| now.saturating_duration_since(self.txs[*t].first_seen) >= ttl)
            .copied()
            .collect();
        let mut out = Vec::new();
        while let Some(txid) = work.pop() {
            if !self.is_undecided(&txid) {
                continue;
            }
            work.extend(self.children(&txid));
            self.drop_tx(&txid);
            out.push(txid);
        }
        self.stats.expired_total += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Hash256;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn tx(n: u64) -> Txid {
        Hash256::digest(&n.to_le_bytes())
    }

    fn op(n: u64, vout: u32) -> OutPoint {
        OutPoint { txid: Hash256::tagged("test-utxo", &[&n.to_le_bytes()]), vout }
    }

    fn sb() -> Snowball {
        Snowball::new(SnowballParams::default())
    }

    /// Thresholds of a 5-node network.
    const K: usize = 4;
    const AP: usize = 3;
    const AC: usize = 3;

    #[test]
    fn defaults_are_valid_and_scale() {
        let p = SnowballParams::default();
        p.validate().unwrap();
        assert_eq!(p.effective(4), (4, 3, 3));
        assert_eq!(p.effective(5), (5, 3, 4));
        assert_eq!(p.effective(6), (6, 4, 5));
        assert_eq!(p.effective(9), (9, 5, 7));
        assert_eq!(p.effective(100), (20, 11, 15));
        assert_eq!(p.effective(1), (1, 1, 1));
        assert_eq!(p.effective(0), (0, 0, 0));
        for n in 1..=40 {
            let (k, ap, ac) = p.effective(n);
            assert!(ap > k / 2 && ap <= ac && ac <= k, "n={n}: {k} {ap} {ac}");
        }
    }

    #[test]
    fn invalid_params_are_refused() {
        let bad = |f: fn(&mut SnowballParams)| {
            let mut p = SnowballParams::default();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert_eq!(bad(|p| p.k = 0), SnowballParamsError::ZeroK);
        assert!(matches!(bad(|p| p.alpha_preference = 10), SnowballParamsError::AlphaPreference { .. }));
        assert!(matches!(bad(|p| p.alpha_confidence = 10), SnowballParamsError::AlphaConfidence { .. }));
        assert!(matches!(bad(|p| p.alpha_confidence = 21), SnowballParamsError::AlphaConfidence { .. }));
        assert_eq!(bad(|p| p.beta = 0), SnowballParamsError::ZeroBeta);
        assert!(matches!(bad(|p| p.batch_max = 5000), SnowballParamsError::BatchMax { .. }));
        assert_eq!(bad(|p| p.expiry_secs = 0), SnowballParamsError::Zero("expiry_secs"));
    }

    #[test]
    fn single_spender_finalizes_in_exactly_beta_polls() {
        let mut s = sb();
        let now = Instant::now();
        assert_eq!(s.insert(tx(1), &[op(1, 0)], now), InsertOutcome::Inserted);
        assert_eq!(s.insert(tx(1), &[op(1, 0)], now), InsertOutcome::Known);
        assert_eq!(s.preference(&tx(1)), Preference::Yes);
        for i in 1..s.params().beta {
            assert!(s.record_poll(&[(tx(1), 3)], K, AP, AC).is_empty());
            assert_eq!(s.confidence(&tx(1)), i);
        }
        let d = s.record_poll(&[(tx(1), 4)], K, AP, AC);
        assert_eq!(d.accepted, vec![tx(1)]);
        assert!(s.is_accepted(&tx(1)));
        assert_eq!(s.stats().finalized_total, 1);
        assert!(s.batch(10).is_empty());
    }

    #[test]
    fn a_failed_poll_resets_the_streak() {
        let mut s = sb();
        s.insert(tx(1), &[op(1, 0)], Instant::now());
        for _ in 0..7 {
            s.record_poll(&[(tx(1), 4)], K, AP, AC);
        }
        assert_eq!(s.confidence(&tx(1)), 7);
        s.record_poll(&[(tx(1), 2)], K, AP, AC);
        assert_eq!(s.confidence(&tx(1)), 0);
        for _ in 0..7 {
            assert!(s.record_poll(&[(tx(1), 3)], K, AP, AC).is_empty());
        }
        assert_eq!(s.record_poll(&[(tx(1), 3)], K, AP, AC).accepted, vec![tx(1)]);
    }

    #[test]
    fn acceptance_rejects_rivals_and_later_double_spends() {
        let mut s = sb();
        let now = Instant::now();
        s.insert(tx(1), &[op(1, 0)], now);
        s.insert(tx(2), &[op(1, 0), op(2, 0)], now);
        s.insert(tx(3), &[op(2, 0)], now);
        assert_eq!(s.preference(&tx(1)), Preference::Yes);
        assert_eq!(s.preference(&tx(2)), Preference::No, "first seen keeps op(1,0)");
        assert_eq!(s.preference(&tx(3)), Preference::No, "tx2 was first on op(2,0)");
        assert_eq!(s.stats().conflict_sets, 2);
        let mut d = Decisions::default();
        for _ in 0..8 {
            let r = s.record_poll(&[(tx(1), 4), (tx(2), 0), (tx(3), 0)], K, AP, AC);
            d.accepted.extend(r.accepted);
            d.rejected.extend(r.rejected);
        }
        assert_eq!(d.accepted, vec![tx(1)]);
        assert_eq!(d.rejected, vec![tx(2)]);
        // With tx2 gone, tx3 is alone on op(2,0) and preferred.
        assert_eq!(s.preference(&tx(3)), Preference::Yes);
        assert_eq!(s.preference(&tx(2)), Preference::No);
        assert_eq!(s.insert(tx(2), &[op(1, 0), op(2, 0)], now), InsertOutcome::Rejected);
        assert_eq!(s.insert(tx(4), &[op(1, 0)], now), InsertOutcome::Rejected);
        assert_eq!(s.preference(&tx(4)), Preference::No);
        assert_eq!(s.preference(&tx(99)), Preference::Unknown);
        assert_eq!(s.stats().rejected_total, 2);
    }

    #[test]
    fn multi_input_tx_needs_every_set() {
        let mut s = sb();
        let now = Instant::now();
        s.insert(tx(1), &[op(1, 0)], now);
        s.insert(tx(2), &[op(2, 0)], now);
        s.insert(tx(3), &[op(1, 0), op(2, 0)], now);
        // tx3 outvotes tx1 on op(1,0) but tx2 still holds op(2,0).
        s.record_poll(&[(tx(3), 3)], K, AP, AC);
        s.record_poll(&[(tx(2), 0)], K, AP, AC);
        assert_eq!(s.sets[&op(1, 0)].preference, tx(3));
        assert_eq!(s.sets[&op(2, 0)].preference, tx(3), "tx3 also outvoted tx2");
        assert_eq!(s.preference(&tx(3)), Preference::Yes);
        let mut s = sb();
        s.insert(tx(1), &[op(1, 0)], now);
        s.insert(tx(2), &[op(2, 0)], now);
        s.insert(tx(3), &[op(1, 0), op(2, 0)], now);
        s.record_poll(&[(tx(2), 3)], K, AP, AC);
        s.record_poll(&[(tx(3), 3)], K, AP, AC);
        // One vote each on op(2,0): the tie keeps tx2, so tx3 is not preferred overall.
        assert_eq!(s.sets[&op(1, 0)].preference, tx(3));
        assert_eq!(s.sets[&op(2, 0)].preference, tx(2));
        assert_eq!(s.preference(&tx(3)), Preference::No);
        assert_eq!(s.confidence(&tx(3)), 0);
        // The network prefers tx2: once it is accepted tx3 dies with it, and tx1 gets its
        // output back.
        let mut d = Decisions::default();
        for _ in 0..8 {
            let r = s.record_poll(&[(tx(2), 3), (tx(3), 0)], K, AP, AC);
            d.accepted.extend(r.accepted);
            d.rejected.extend(r.rejected);
        }
        assert_eq!(d.accepted, vec![tx(2)]);
        assert_eq!(d.rejected, vec![tx(3)]);
        assert_eq!(s.preference(&tx(1)), Preference::Yes);
        assert_eq!(s.sets[&op(1, 0)].members.len(), 1);
    }

    #[test]
    fn children_wait_for_parents_and_die_with_them() {
        let mut s = sb();
        let now = Instant::now();
        let parent = tx(1);
        let rival = tx(2);
        let child = tx(3);
        s.insert(parent, &[op(1, 0)], now);
        s.insert(rival, &[op(1, 0)], now);
        s.insert(child, &[OutPoint { txid: parent, vout: 0 }], now);
        assert_eq!(s.preference(&child), Preference::Yes);
        // The child alone collects yes votes, but cannot be accepted before its parent.
        for _ in 0..10 {
            assert!(s.record_poll(&[(child, 4)], K, AP, AC).is_empty());
        }
        // The rival wins: the parent is rejected and so is its child. Once the rival is
        // preferred, the child's own set still prefers it, but its parent is losing: No.
        let r = s.record_poll(&[(rival, 4), (parent, 0)], K, AP, AC);
        assert!(r.is_empty());
        assert_eq!(s.preference(&rival), Preference::Yes);
        assert_eq!(s.sets[&OutPoint { txid: parent, vout: 0 }].preference, child);
        assert_eq!(s.preference(&child), Preference::No, "its undecided parent is not preferred");
        let mut d = Decisions::default();
        for _ in 0..8 {
            let r = s.record_poll(&[(rival, 4), (parent, 0)], K, AP, AC);
            d.accepted.extend(r.accepted);
            d.rejected.extend(r.rejected);
        }
        assert_eq!(d.accepted, vec![rival]);
        d.rejected.sort();
        let mut want = vec![parent, child];
        want.sort();
        assert_eq!(d.rejected, want);
        // A new spend of the dead parent's output is rejected on sight.
        assert_eq!(s.insert(tx(4), &[OutPoint { txid: parent, vout: 1 }], now), InsertOutcome::Rejected);

        // And the other way round: the child is accepted right after its parent.
        let mut s = sb();
        s.insert(parent, &[op(1, 0)], now);
        s.insert(child, &[OutPoint { txid: parent, vout: 0 }], now);
        for _ in 0..10 {
            s.record_poll(&[(child, 4)], K, AP, AC);
        }
        let mut accepted = Vec::new();
        for _ in 0..8 {
            accepted.extend(s.record_poll(&[(parent, 4)], K, AP, AC).accepted);
        }
        assert_eq!(accepted, vec![parent, child]);
    }

    #[test]
    fn children_are_found_on_every_spent_output_and_forgotten_with_their_sets() {
        let mut s = sb();
        let now = Instant::now();
        let (parent, rival) = (tx(1), tx(2));
        s.insert(parent, &[op(1, 0)], now);
        s.insert(rival, &[op(1, 0)], now);
        let out = |vout| OutPoint { txid: parent, vout };
        s.insert(tx(3), &[out(0)], now);
        s.insert(tx(4), &[out(2)], now);
        s.insert(tx(5), &[out(2), op(9, 0)], now);
        let mut children = vec![tx(3), tx(4), tx(5)];
        children.sort();
        assert_eq!(s.children(&parent), children);
        assert!(s.children(&tx(3)).is_empty());
        let d = s.accept_external(&rival);
        let mut rejected = d.rejected.clone();
        rejected.sort();
        let mut want = vec![parent, tx(3), tx(4), tx(5)];
        want.sort();
        assert_eq!(rejected, want, "the losing parent takes all its children along");
        assert!(s.remove(&rival));
        assert_eq!(s.stats().tracked, 0);
        assert!(s.sets.is_empty() && s.spent_outputs.is_empty(), "nothing left behind once all are gone");
    }

    #[test]
    fn external_acceptance_and_removal() {
        let mut s = sb();
        let now = Instant::now();
        s.insert(tx(1), &[op(1, 0)], now);
        s.insert(tx(2), &[op(1, 0)], now);
        let d = s.accept_external(&tx(2));
        assert_eq!(d.accepted, vec![tx(2)]);
        assert_eq!(d.rejected, vec![tx(1)]);
        assert_eq!(s.preference(&tx(2)), Preference::Yes);
        assert_eq!(s.confidence(&tx(2)), s.params().beta);
        assert_eq!(s.stats().accepted_external_total, 1);
        assert_eq!(s.stats().finalized_total, 0);
        assert!(s.remove(&tx(2)));
        assert_eq!(s.preference(&tx(2)), Preference::Unknown);
        assert_eq!(s.stats().tracked, 0);
        // Removing a preferred spender hands the set to the next one.
        s.insert(tx(5), &[op(5, 0)], now);
        s.insert(tx(6), &[op(5, 0)], now);
        assert_eq!(s.preference(&tx(6)), Preference::No);
        s.remove(&tx(5));
        assert_eq!(s.preference(&tx(6)), Preference::Yes);
    }

    #[test]
    fn undecided_transactions_expire() {
        let mut s = sb();
        let t0 = Instant::now();
        s.insert(tx(1), &[op(1, 0)], t0);
        s.insert(tx(2), &[OutPoint { txid: tx(1), vout: 0 }], t0 + Duration::from_secs(30));
        s.insert(tx(3), &[op(3, 0)], t0 + Duration::from_secs(30));
        s.insert(tx(4), &[op(4, 0)], t0);
        s.accept_external(&tx(4));
        assert_eq!(s.batch(10), vec![tx(1), tx(2), tx(3)]);
        assert!(s.expire(t0 + Duration::from_secs(59)).is_empty());
        let mut gone = s.expire(t0 + Duration::from_secs(60));
        gone.sort();
        let mut want = vec![tx(1), tx(2)];
        want.sort();
        assert_eq!(gone, want, "the child goes with its parent");
        assert_eq!(s.batch(10), vec![tx(3)]);
        assert!(s.is_accepted(&tx(4)), "accepted transactions never expire");
        assert_eq!(s.stats().expired_total, 2);
        assert_eq!(s.preference(&tx(1)), Preference::Unknown);
    }

    #[test]
    fn batch_where_fills_up_past_the_filtered_oldest() {
        let mut s = Snowball::new(SnowballParams { batch_max: 3, ..Default::default() });
        let now = Instant::now();
        for i in 0..8 {
            s.insert(tx(i), &[op(i, 0)], now);
        }
        // The three oldest are in flight elsewhere: the next batch is the three after them,
        // not an empty one.
        let busy = [tx(0), tx(1), tx(2)];
        assert_eq!(s.batch_where(10, |t| !busy.contains(t)), vec![tx(3), tx(4), tx(5)]);
        assert_eq!(s.batch_where(2, |t| !busy.contains(t)), vec![tx(3), tx(4)]);
        assert!(s.batch_where(10, |_| false).is_empty());
    }

    #[test]
    fn batch_is_oldest_first_and_capped() {
        let mut s = Snowball::new(SnowballParams { batch_max: 3, ..SnowballParams::default() });
        let now = Instant::now();
        for i in 0..5 {
            s.insert(tx(i), &[op(i, 0)], now);
        }
        assert_eq!(s.batch(10), vec![tx(0), tx(1), tx(2)]);
        assert_eq!(s.batch(2), vec![tx(0), tx(1)]);
    }

    /// One simulated network: each node knows the transaction it was seeded with, learns the
    /// other when first polled about it or by gossip, and polls `k` random peers at random
    /// times. Returns, per node, (accepted, rejected).
    fn simulate(
        n: usize,
        params: SnowballParams,
        seeds: &[bool],
        rng_seed: u64,
        max_steps: usize,
    ) -> Vec<(Vec<Txid>, Vec<Txid>)> {
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let (a, b) = (tx(100), tx(200));
        let spent = [op(7, 0)];
        let now = Instant::now();
        let mut nodes: Vec<Snowball> = (0..n).map(|_| Snowball::new(params.clone())).collect();
        let mut decided: Vec<(Vec<Txid>, Vec<Txid>)> = vec![(vec![], vec![]); n];
        for (i, node) in nodes.iter_mut().enumerate() {
            node.insert(if seeds[i] { a } else { b }, &spent, now);
        }
        let (k, ap, ac) = params.effective(n - 1);
        for _ in 0..max_steps {
            if decided.iter().all(|(acc, rej)| acc.len() + rej.len() == 2) {
                break;
            }
            // Gossip: transactions reach every node eventually.
            if rng.gen_bool(0.2) {
                let (p, t) = (rng.gen_range(0..n), if rng.gen() { a } else { b });
                if nodes[p].insert(t, &spent, now) == InsertOutcome::Rejected && !decided[p].1.contains(&t) {
                    decided[p].1.push(t);
                }
            }
            let me = rng.gen_range(0..n);
            let batch = nodes[me].batch(16);
            if batch.is_empty() {
                continue;
            }
            let mut peers: Vec<usize> = (0..n).filter(|&p| p != me).collect();
            peers.shuffle(&mut rng);
            let mut yes = vec![0usize; batch.len()];
            for &p in &peers[..k] {
                for (j, t) in batch.iter().enumerate() {
                    match nodes[p].preference(t) {
                        Preference::Yes => yes[j] += 1,
                        Preference::No => {}
                        // Asked about something new: fetch it, as a node would. A spend
                        // that arrives after its rival won is rejected on sight.
                        Preference::Unknown => {
                            if nodes[p].insert(*t, &spent, now) == InsertOutcome::Rejected && !decided[p].1.contains(t)
                            {
                                decided[p].1.push(*t);
                            }
                        }
                    }
                }
            }
            let results: Vec<(Txid, usize)> = batch.into_iter().zip(yes).collect();
            let d = nodes[me].record_poll(&results, k, ap, ac);
            decided[me].0.extend(d.accepted);
            decided[me].1.extend(d.rejected);
        }
        decided
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn honest_network_agrees_on_one_double_spend(
            n in 5usize..=9,
            split in proptest::collection::vec(any::<bool>(), 9),
            seed in any::<u64>(),
        ) {
            let mut seeds = split[..n].to_vec();
            // Both spends must be out there.
            seeds[0] = true;
            seeds[1] = false;
            let decided = simulate(n, SnowballParams::default(), &seeds, seed, 200_000);
            let winner = decided[0].0.first().copied();
            prop_assert!(winner.is_some(), "node 0 decided nothing: {:?}", decided);
            let winner = winner.unwrap();
            let loser = if winner == tx(100) { tx(200) } else { tx(100) };
            for (acc, rej) in &decided {
                prop_assert_eq!(acc, &vec![winner]);
                prop_assert_eq!(rej, &vec![loser]);
            }
        }

        #[test]
        fn random_samples_smaller_than_the_network_agree_too(
            n in 7usize..=9,
            split in proptest::collection::vec(any::<bool>(), 9),
            seed in any::<u64>(),
        ) {
            // k = 4 of 6..8 peers: samples differ from poll to poll.
            let params = SnowballParams { k: 4, alpha_preference: 3, alpha_confidence: 3, ..SnowballParams::default() };
            let mut seeds = split[..n].to_vec();
            seeds[0] = true;
            seeds[1] = false;
            let decided = simulate(n, params, &seeds, seed, 200_000);
            let winner = decided[0].0.first().copied();
            prop_assert!(winner.is_some(), "node 0 decided nothing: {:?}", decided);
            let winner = winner.unwrap();
            for (acc, rej) in &decided {
                prop_assert_eq!(acc, &vec![winner]);
                prop_assert_eq!(rej.len(), 1);
                prop_assert!(rej[0] != winner);
            }
        }

        #[test]
        fn never_accepted_without_alpha(polls in proptest::collection::vec((0usize..3, 0usize..3), 1..200)) {
            // Two rivals whose yes counts never reach alpha_confidence = 3 of 4.
            let mut s = sb();
            let now = Instant::now();
            s.insert(tx(1), &[op(1, 0)], now);
            s.insert(tx(2), &[op(1, 0), op(2, 0)], now);
            for (y1, y2) in polls {
                let d = s.record_poll(&[(tx(1), y1), (tx(2), y2)], K, AP, AC);
                prop_assert!(d.is_empty());
            }
            prop_assert_eq!(s.stats().undecided, 2);
        }

        #[test]
        fn below_confidence_never_accepts(polls in proptest::collection::vec(0usize..=4, 1..200)) {
            // alpha_preference 3 of 5 can move preferences, but confidence needs 4.
            let mut s = sb();
            s.insert(tx(1), &[op(1, 0)], Instant::now());
            for y in polls {
                let d = s.record_poll(&[(tx(1), y.min(3))], 5, 3, 4);
                prop_assert!(d.is_empty());
            }
        }

        #[test]
        fn no_tx_both_accepted_and_rejected(seed in any::<u64>(), n in 5usize..=9) {
            // A weaker beta and short runs: whatever each node managed to decide, no tx is
            // accepted on one node and rejected on another.
            let mut rng = StdRng::seed_from_u64(seed);
            let seeds: Vec<bool> = (0..n).map(|i| if i < 2 { i == 0 } else { rng.gen() }).collect();
            let decided = simulate(n, SnowballParams { beta: 3, ..SnowballParams::default() }, &seeds, seed, 5_000);
            let accepted: Vec<Txid> = decided.iter().flat_map(|d| d.0.clone()).collect();
            let rejected: Vec<Txid> = decided.iter().flat_map(|d| d.1.clone()).collect();
            for t in &accepted {
                prop_assert!(!rejected.contains(t));
            }
        }

        /// The allocation-free chain walk answers as the general walk does, on random spend
        /// graphs: forks, shared parents, rivals, accepted ancestors and cycles of made-up
        /// txids.
        #[test]
        fn chain_walk_agrees_with_the_general_walk(
            spends in proptest::collection::vec(proptest::collection::vec((0u64..14, 0u32..2), 1..4), 1..14),
            polls in proptest::collection::vec((0u64..14, 0usize..=4), 0..40),
        ) {
            let mut s = sb();
            let now = Instant::now();
            // Transaction i spends outputs of transactions in 0..14 (later ones too: cycles),
            // or of settled ones (n ≥ 10 stands for outputs nobody tracks).
            for (i, inputs) in spends.iter().enumerate() {
                let ops: Vec<OutPoint> = inputs
                    .iter()
                    .map(|&(n, vout)| if n >= 10 { op(n, vout) } else { OutPoint { txid: tx(n), vout } })
                    .collect();
                s.insert(tx(i as u64), &ops, now);
            }
            for (n, yes) in polls {
                s.record_poll(&[(tx(n), yes)], K, AP, AC);
            }
            for i in 0..14 {
                let t = tx(i);
                let walked = s.txs.get(&t).map(|e| s.strongly_preferred(&t, e));
                let general = s.txs.contains_key(&t).then(|| s.ancestors_preferred(t));
                prop_assert_eq!(walked, general, "tx {}", i);
            }
        }
    }

    proptest! {
        /// The `plain` shortcut changes no outcome: the same operations, in any order (rivals
        /// joining later, parents arriving after their spenders, polls, removals, block
        /// acceptances, expiry), give the same decisions, answers, confidences and counters
        /// with it as without it, and its poll answers are what the full walk gives.
        #[test]
        fn plain_shortcut_changes_no_outcome(
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => proptest::collection::vec((0u64..16, 0u32..2), 1..3).prop_map(Op::Insert),
                    6 => proptest::collection::vec((0u64..12, 0usize..=4), 1..3).prop_map(Op::Poll),
                    1 => (0u64..12).prop_map(Op::Remove),
                    1 => (0u64..12).prop_map(Op::Block),
                    1 => Just(Op::Expire),
                ],
                1..80,
            ),
        ) {
            // beta 2: streaks long enough to accept come up in short random runs.
            let params = SnowballParams { beta: 2, ..SnowballParams::default() };
            let mut fast = Snowball::new(params.clone());
            let mut general = Snowball { shortcuts: false, ..Snowball::new(params.clone()) };
            let now = Instant::now();
            let mut next = 0u64;
            for o in ops {
                let (a, b) = match &o {
                    // Spends outputs of transactions 0..12, inserted or not yet (n ≥ 12: outputs
                    // nobody tracks).
                    Op::Insert(inputs) => {
                        let ops: Vec<OutPoint> = inputs
                            .iter()
                            .map(|&(n, vout)| if n >= 12 { op(n, vout) } else { OutPoint { txid: tx(n), vout } })
                            .collect();
                        let t = tx(next % 12);
                        next += 1;
                        prop_assert_eq!(fast.insert(t, &ops, now), general.insert(t, &ops, now));
                        (Decisions::default(), Decisions::default())
                    }
                    Op::Poll(votes) => {
                        let r: Vec<(Txid, usize)> = votes.iter().map(|&(n, yes)| (tx(n), yes)).collect();
                        (fast.record_poll(&r, K, AP, AC), general.record_poll(&r, K, AP, AC))
                    }
                    Op::Remove(n) => {
                        prop_assert_eq!(fast.remove(&tx(*n)), general.remove(&tx(*n)));
                        (Decisions::default(), Decisions::default())
                    }
                    Op::Block(n) => (fast.accept_external(&tx(*n)), general.accept_external(&tx(*n))),
                    Op::Expire => {
                        let later = now + Duration::from_secs(params.expiry_secs);
                        let (x, y) = (fast.expire(later), general.expire(later));
                        (Decisions { accepted: vec![], rejected: x }, Decisions { accepted: vec![], rejected: y })
                    }
                };
                prop_assert_eq!(a, b, "after {:?}", o);
                prop_assert_eq!(fast.stats(), general.stats());
                prop_assert_eq!(fast.batch(100), general.batch(100));
                for i in 0..12 {
                    let t = tx(i);
                    prop_assert_eq!(fast.preference(&t), general.preference(&t), "tx {} after {:?}", i, o);
                    prop_assert_eq!(fast.confidence(&t), general.confidence(&t), "tx {} after {:?}", i, o);
                    prop_assert_eq!(fast.is_rejected(&t), general.is_rejected(&t));
                    prop_assert_eq!(fast.is_accepted(&t), general.is_accepted(&t));
                    // `general` never marks a transaction plain: its walk looks at every set
                    // and every undecided ancestor.
                    let walked = fast.txs.get(&t).map(|e| fast.strongly_preferred(&t, e));
                    let full = general.txs.contains_key(&t).then(|| general.ancestors_preferred(t));
                    prop_assert_eq!(walked, full, "tx {}", i);
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Vec<(u64, u32)>),
        Poll(Vec<(u64, usize)>),
        Remove(u64),
        Block(u64),
        Expire,
    }

    #[test]
    fn three_quarter_preference_can_deadlock() {
        // Why the default alpha_preference is a majority: 7 nodes split 4/3 with k = 6 asking
        // everyone. With alpha_preference 5 of 6 no node ever sees enough votes to switch.
        let strict = SnowballParams { alpha_preference: 15, ..SnowballParams::default() };
        let seeds = [true, false, true, true, false, false, true];
        let decided = simulate(7, strict, &seeds, 1, 20_000);
        assert!(decided.iter().all(|(a, r)| a.is_empty() && r.is_empty()));
        let decided = simulate(7, SnowballParams::default(), &seeds, 1, 20_000);
        assert!(decided.iter().all(|(a, r)| a.len() == 1 && r.len() == 1));
    }
}
