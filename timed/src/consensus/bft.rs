//! Tendermint agreement on one block per height: Algorithm 1 of "The latest gossip on BFT
//! consensus" (Buchman, Kwon, Milosevic, 2018) as an event-driven state machine.
//!
//! The machine never signs, sends, or waits. Each event returns [`Action`]s for the caller:
//! sign and broadcast a vote (and feed it back through [`Bft::on_vote`]), build or re-send a
//! proposal (and feed it back through [`Bft::on_proposal`]), arm a timer (and call
//! [`Bft::on_timeout`] when it fires), or persist a commit and call [`Bft::start_height`] for
//! the next height. Signatures are checked by the caller before events come in; messages for
//! later heights are buffered by the caller; later rounds of this height are kept here.
//!
//! Line numbers in comments refer to Algorithm 1 of the paper.

use crate::chain::{Block, BlockHash, ValidatorIndex};
use crate::consensus::messages::{Vote, VoteKind};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Rounds ahead of the current one whose messages are stored in full. Votes further ahead
/// still count towards skipping rounds (line 55), so a node far behind catches up.
pub const FUTURE_ROUND_WINDOW: u32 = 16;

/// Distinct proposals kept per round. Only the round's proposer can fill this, and an honest
/// one sends one; the second lets a node still commit what an equivocating proposer got
/// through.
const MAX_PROPOSALS_PER_ROUND: usize = 2;

/// Equivocation evidence kept for inspection (the most recent, across heights).
const MAX_EVIDENCE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeoutKind {
    Propose,
    Prevote,
    Precommit,
}

/// Where the machine is within a height.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Before the first `start_height`.
    Idle,
    Propose,
    Prevote,
    Precommit,
    /// Decided this height; waiting for `start_height`.
    Committed,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::Propose => "propose",
            Step::Prevote => "prevote",
            Step::Precommit => "precommit",
            Step::Committed => "commit",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BftParams {
    pub n: usize,
    /// Matching votes that make a quorum: more than two thirds of `n`.
    pub quorum: usize,
    /// This node's validator index; `None` follows and commits without voting.
    pub me: Option<ValidatorIndex>,
    pub timeout_propose_ms: u64,
    pub timeout_prevote_ms: u64,
    pub timeout_precommit_ms: u64,
    /// Added to every timeout per round, so rounds eventually outlast any network delay.
    pub timeout_delta_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BftParamsError {
    #[error("no validators")]
    NoValidators,
    #[error("quorum {quorum} must be more than two thirds of {n} and at most {n}")]
    BadQuorum { quorum: usize, n: usize },
    #[error("validator index {me} is not below {n}")]
    BadIndex { me: ValidatorIndex, n: usize },
}

impl BftParams {
    /// Default timeouts (CometBFT's: 3 s to propose, 1 s per voting step, +0.5 s a round)
    /// and the smallest quorum above two thirds.
    pub fn new(n: usize, me: Option<ValidatorIndex>) -> Self {
        BftParams {
            n,
            quorum: n * 2 / 3 + 1,
            me,
            timeout_propose_ms: 3000,
            timeout_prevote_ms: 1000,
            timeout_precommit_ms: 1000,
            timeout_delta_ms: 500,
        }
    }

    pub fn validate(&self) -> Result<(), BftParamsError> {
        if self.n == 0 {
            return Err(BftParamsError::NoValidators);
        }
        if self.quorum * 3 <= self.n * 2 || self.quorum > self.n {
            return Err(BftParamsError::BadQuorum { quorum: self.quorum, n: self.n });
        }
        if let Some(me) = self.me {
            if me as usize >= self.n {
                return Err(BftParamsError::BadIndex { me, n: self.n });
            }
        }
        Ok(())
    }

    /// Senders enough to include an honest one (f + 1 when n = 3f + 1).
    pub fn honest_threshold(&self) -> usize {
        self.n - self.quorum + 1
    }

    pub fn timeout_ms(&self, kind: TimeoutKind, round: u32) -> u64 {
        let base = match kind {
            TimeoutKind::Propose => self.timeout_propose_ms,
            TimeoutKind::Prevote => self.timeout_prevote_ms,
            TimeoutKind::Precommit => self.timeout_precommit_ms,
        };
        base.saturating_add(self.timeout_delta_ms.saturating_mul(round as u64))
    }
}

/// What the caller must do, at the machine's current height.
// Blocks travel unboxed: a handful of actions per event, moved straight to the caller.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// This node proposes for `round`. With `valid_block` set, re-broadcast that block (the
    /// valid value) with `valid_round`; otherwise build and sign a new block. Either way feed
    /// the proposal back through `on_proposal`.
    Propose { round: u32, valid_round: Option<u32>, valid_block: Option<Block> },
    /// Sign and broadcast this vote, and feed it back through `on_vote`.
    Vote { kind: VoteKind, round: u32, block_hash: Option<BlockHash> },
    /// Call `on_timeout(kind, height, round)` after `after_ms`.
    ScheduleTimeout { kind: TimeoutKind, height: u64, round: u32, after_ms: u64 },
    /// The height is decided: `cert_votes` are at least a quorum of precommits for `block`
    /// in `round`. Happens once per height.
    Commit { height: u64, round: u32, block: Block, cert_votes: Vec<Vote> },
}

/// Counters for getconsensusinfo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BftStats {
    pub commits: u64,
    /// Rounds left because the precommit timeout fired.
    pub rounds_timed_out: u64,
    /// Rounds skipped because enough validators were already further on.
    pub round_skips: u64,
    /// Validators seen voting two values in one (round, kind), or proposers seen proposing
    /// two blocks in one round.
    pub equivocations: u64,
    /// Messages for another height, from unknown validators or from the wrong proposer.
    pub ignored_messages: u64,
}

struct StoredBlock {
    block: Block,
    valid: bool,
}

struct ProposalMeta {
    hash: BlockHash,
    valid_round: Option<u32>,
}

/// One kind of vote in one round, tallied by value.
///
/// As in the paper, messages are counted: a validator that votes two values counts once for
/// each (never twice for one), and once towards "any value" thresholds. That is safe: two
/// quorums for different values share more than f validators, so some honest one would have
/// to vote twice. Counting only a first vote instead can strand a node: the certificate that
/// decided a height may hold the equivocator's other vote, which that node then ignores.
#[derive(Default)]
struct VoteSet {
    votes: BTreeMap<ValidatorIndex, Vec<Vote>>,
    tally: HashMap<Option<BlockHash>, usize>,
}

/// Distinct values kept per validator in one VoteSet (nil and two blocks), so an equivocator
/// cannot grow memory. Dropping its further votes is no worse than it not sending them.
const MAX_VALUES_PER_VOTER: usize = 3;

enum Added {
    New,
    Duplicate,
    /// Counted, but the validator had already voted another value: this is its first vote.
    Conflict(Vote),
}

impl VoteSet {
    fn add(&mut self, vote: &Vote) -> Added {
        let mine = self.votes.entry(vote.validator).or_default();
        if mine.iter().any(|v| v.block_hash == vote.block_hash) || mine.len() >= MAX_VALUES_PER_VOTER {
            return Added::Duplicate;
        }
        let first = mine.first().cloned();
        mine.push(vote.clone());
        *self.tally.entry(vote.block_hash).or_default() += 1;
        match first {
            None => Added::New,
            Some(first) => Added::Conflict(first),
        }
    }

    /// Distinct validators that voted anything.
    fn total(&self) -> usize {
        self.votes.len()
    }

    fn count(&self, value: Option<BlockHash>) -> usize {
        self.tally.get(&value).copied().unwrap_or(0)
    }

    fn votes_for(&self, value: Option<BlockHash>) -> Vec<Vote> {
        self.votes.values().flatten().filter(|v| v.block_hash == value).cloned().collect()
    }

    fn first_of(&self, validator: ValidatorIndex) -> Option<&Vote> {
        self.votes.get(&validator).and_then(|v| v.first())
    }
}

#[derive(Default)]
struct RoundState {
    /// From the round's proposer; the first one is what this node prevotes on.
    proposals: Vec<ProposalMeta>,
    prevotes: VoteSet,
    precommits: VoteSet,
    /// One-shot rules of lines 34, 36 and 47.
    prevote_timeout_armed: bool,
    polka_seen: bool,
    precommit_timeout_armed: bool,
}

/// Maps a round to its proposer.
type ProposerFn = Box<dyn Fn(u32) -> ValidatorIndex + Send + Sync>;

pub struct Bft {
    params: BftParams,
    height: u64,
    round: u32,
    step: Step,
    proposer_of: Option<ProposerFn>,
    /// (round, block hash): lockedRound/lockedValue and validRound/validValue.
    locked: Option<(u32, BlockHash)>,
    valid: Option<(u32, BlockHash)>,
    blocks: HashMap<BlockHash, StoredBlock>,
    rounds: BTreeMap<u32, RoundState>,
    /// Highest round each validator sent a vote in, this height (for line 55).
    max_round_seen: HashMap<ValidatorIndex, u32>,
    stats: BftStats,
    evidence: VecDeque<(Vote, Vote)>,
}

impl Bft {
    /// Panics on parameters that [`BftParams::validate`] refuses: a quorum too small for
    /// safety is a bug, never a state to run in. See [`Bft::try_new`].
    pub fn new(params: BftParams) -> Self {
        match Self::try_new(params) {
            Ok(b) => b,
            Err(e) => panic!("invalid BFT parameters: {e}"),
        }
    }

    pub fn try_new(params: BftParams) -> Result<Self, BftParamsError> {
        params.validate()?;
        Ok(Bft {
            params,
            height: 0,
            round: 0,
            step: Step::Idle,
            proposer_of: None,
            locked: None,
            valid: None,
            blocks: HashMap::new(),
            rounds: BTreeMap::new(),
            max_round_seen: HashMap::new(),
            stats: BftStats::default(),
            evidence: VecDeque::new(),
        })
    }

    pub fn params(&self) -> &BftParams {
        &self.params
    }

    pub fn height(&self) -> u64 {
        self.height
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn step(&self) -> Step {
        self.step
    }

    pub fn step_name(&self) -> &'static str {
        self.step.name()
    }

    pub fn stats(&self) -> &BftStats {
        &self.stats
    }

    /// Recent pairs of conflicting votes by one validator (its first vote, then the other),
    /// oldest first.
    pub fn equivocation_evidence(&self) -> impl Iterator<Item = &(Vote, Vote)> + '_ {
        self.evidence.iter()
    }

    pub fn is_decided(&self) -> bool {
        self.step == Step::Committed
    }

    /// The proposer of `round` at this height (none before the first height starts).
    pub fn proposer(&self, round: u32) -> Option<ValidatorIndex> {
        self.proposer_of.as_ref().map(|f| f(round))
    }

    /// This node's latest votes at this height (those of the highest round it voted in so
    /// far), for the caller to re-broadcast now and then. The algorithm assumes every vote
    /// eventually arrives; after lost messages or a restart, nodes all waiting on each other
    /// only get going again if they repeat themselves.
    pub fn own_votes(&self) -> Vec<Vote> {
        let Some(me) = self.params.me else { return Vec::new() };
        for rs in self.rounds.range(..=self.round).rev().map(|(_, rs)| rs) {
            let votes: Vec<Vote> =
                [rs.prevotes.first_of(me), rs.precommits.first_of(me)].into_iter().flatten().cloned().collect();
            if !votes.is_empty() {
                return votes;
            }
        }
        Vec::new()
    }

    /// lockedRound and lockedValue.
    pub fn locked_block(&self) -> Option<(u32, &Block)> {
        self.locked.and_then(|(r, h)| self.blocks.get(&h).map(|b| (r, &b.block)))
    }

    /// validRound and validValue: what this node re-proposes when it leads a later round.
    pub fn valid_block(&self) -> Option<(u32, &Block)> {
        self.valid.and_then(|(r, h)| self.blocks.get(&h).map(|b| (r, &b.block)))
    }

    /// Starts `height` at round 0, forgetting everything about the previous one. Round `r` is
    /// proposed by `proposer_of(r)`, usually `ranking[r % len]` of [`super::leader::ranking`].
    pub fn start_height(
        &mut self,
        height: u64,
        proposer_of: impl Fn(u32) -> ValidatorIndex + Send + Sync + 'static,
    ) -> Vec<Action> {
        self.height = height;
        self.proposer_of = Some(Box::new(proposer_of));
        self.locked = None;
        self.valid = None;
        self.blocks.clear();
        self.rounds.clear();
        self.max_round_seen.clear();
        let mut out = Vec::new();
        self.start_round(0, &mut out);
        self.process(&mut out);
        out
    }

    /// A proposal for `round` of this height. `is_valid` is the caller's full validation of
    /// the block; `from` is who sent it, which must be the round's proposer.
    pub fn on_proposal(
        &mut self,
        round: u32,
        block_hash: BlockHash,
        block: Block,
        valid_round: Option<u32>,
        is_valid: bool,
        from: ValidatorIndex,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.step, Step::Idle | Step::Committed) {
            return out;
        }
        if block.height() != self.height || self.proposer(round) != Some(from) || block.hash() != block_hash {
            self.stats.ignored_messages += 1;
            return out;
        }
        if round > self.round.saturating_add(FUTURE_ROUND_WINDOW) {
            return out;
        }
        let rs = self.rounds.entry(round).or_default();
        if rs.proposals.iter().any(|p| p.hash == block_hash) {
            return out;
        }
        if !rs.proposals.is_empty() {
            self.stats.equivocations += 1;
        }
        if rs.proposals.len() >= MAX_PROPOSALS_PER_ROUND {
            return out;
        }
        rs.proposals.push(ProposalMeta { hash: block_hash, valid_round });
        // Once fully validated, a block stays valid for this height (validity may only
        // have been pending, say, on a parent transaction arriving).
        self.blocks.entry(block_hash).or_insert(StoredBlock { block, valid: false }).valid |= is_valid;
        self.process(&mut out);
        out
    }

    /// A prevote or precommit (signature already checked), including this node's own.
    pub fn on_vote(&mut self, vote: &Vote) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.step, Step::Idle | Step::Committed) {
            return out;
        }
        if vote.height != self.height || vote.validator as usize >= self.params.n {
            self.stats.ignored_messages += 1;
            return out;
        }
        let seen = self.max_round_seen.entry(vote.validator).or_insert(vote.round);
        *seen = (*seen).max(vote.round);
        if vote.round <= self.round.saturating_add(FUTURE_ROUND_WINDOW) {
            let rs = self.rounds.entry(vote.round).or_default();
            let set = match vote.kind {
                VoteKind::Prevote => &mut rs.prevotes,
                VoteKind::Precommit => &mut rs.precommits,
            };
            match set.add(vote) {
                Added::New => {}
                Added::Duplicate => return out,
                Added::Conflict(first) => {
                    self.stats.equivocations += 1;
                    if self.evidence.len() == MAX_EVIDENCE {
                        self.evidence.pop_front();
                    }
                    self.evidence.push_back((first, vote.clone()));
                }
            }
        }
        self.process(&mut out);
        out
    }

    /// A timer armed by [`Action::ScheduleTimeout`] fired; stale ones are ignored.
    pub fn on_timeout(&mut self, kind: TimeoutKind, height: u64, round: u32) -> Vec<Action> {
        let mut out = Vec::new();
        if height != self.height || round != self.round {
            return out;
        }
        match (kind, self.step) {
            // OnTimeoutPropose
            (TimeoutKind::Propose, Step::Propose) => {
                self.vote(VoteKind::Prevote, None, &mut out);
                self.step = Step::Prevote;
            }
            // OnTimeoutPrevote
            (TimeoutKind::Prevote, Step::Prevote) => {
                self.vote(VoteKind::Precommit, None, &mut out);
                self.step = Step::Precommit;
            }
            // OnTimeoutPrecommit
            (TimeoutKind::Precommit, Step::Propose | Step::Prevote | Step::Precommit) => {
                self.stats.rounds_timed_out += 1;
                self.start_round(round + 1, &mut out);
            }
            _ => return out,
        }
        self.process(&mut out);
        out
    }

    fn start_round(&mut self, round: u32, out: &mut Vec<Action>) {
        self.round = round;
        self.step = Step::Propose;
        if let (Some(me), Some(p)) = (self.params.me, self.proposer(round)) {
            if me == p {
                let (valid_round, valid_block) = match self.valid {
                    Some((vr, h)) => (Some(vr), self.blocks.get(&h).map(|b| b.block.clone())),
                    None => (None, None),
                };
                out.push(Action::Propose { round, valid_round, valid_block });
            }
        }
        // The paper arms this only on other nodes; arming it here too means a proposer that
        // fails to build a block still moves on instead of waiting for the others.
        self.schedule(TimeoutKind::Propose, out);
    }

    fn schedule(&self, kind: TimeoutKind, out: &mut Vec<Action>) {
        out.push(Action::ScheduleTimeout {
            kind,
            height: self.height,
            round: self.round,
            after_ms: self.params.timeout_ms(kind, self.round),
        });
    }

    fn vote(&self, kind: VoteKind, block_hash: Option<BlockHash>, out: &mut Vec<Action>) {
        if self.params.me.is_some() {
            out.push(Action::Vote { kind, round: self.round, block_hash });
        }
    }

    fn valid_block_hash(&self, hash: &BlockHash) -> bool {
        self.blocks.get(hash).is_some_and(|b| b.valid)
    }

    /// Fires rules until none applies; each rule changes state, so this terminates.
    fn process(&mut self, out: &mut Vec<Action>) {
        while !matches!(self.step, Step::Idle | Step::Committed) && self.apply_one_rule(out) {}
    }

    fn apply_one_rule(&mut self, out: &mut Vec<Action>) -> bool {
        let q = self.params.quorum;

        // Line 49: a quorum of precommits for a known, valid block in any round decides.
        let decided = self.rounds.iter().find_map(|(&r, rs)| {
            rs.precommits
                .tally
                .iter()
                .find(|(v, c)| **c >= q && v.is_some_and(|h| self.valid_block_hash(&h)))
                .map(|(v, _)| (r, v.expect("checked above")))
        });
        if let Some((r, h)) = decided {
            let block = self.blocks[&h].block.clone();
            let cert_votes = self.rounds[&r].precommits.votes_for(Some(h));
            self.step = Step::Committed;
            self.stats.commits += 1;
            out.push(Action::Commit { height: self.height, round: r, block, cert_votes });
            return true;
        }

        // Line 55: enough validators are in later rounds to include an honest one. Jump to
        // the highest round that many have reached.
        let t = self.params.honest_threshold();
        if self.max_round_seen.len() >= t {
            let mut seen: Vec<u32> = self.max_round_seen.values().copied().collect();
            seen.sort_unstable_by(|a, b| b.cmp(a));
            let target = seen[t - 1];
            if target > self.round {
                self.stats.round_skips += 1;
                self.start_round(target, out);
                return true;
            }
        }

        let round = self.round;
        let locked = self.locked;
        let Some(rs) = self.rounds.get(&round) else { return false };

        if self.step == Step::Propose {
            if let Some(p) = rs.proposals.first() {
                let valid = self.valid_block_hash(&p.hash);
                let prevote = match p.valid_round {
                    // Line 22: a fresh proposal.
                    None => Some(valid && lock_permits(locked, p.hash, None)),
                    // Line 28: a re-proposal, backed by a quorum of prevotes in its round.
                    Some(vr) if vr < round => {
                        let polka = self.rounds.get(&vr).is_some_and(|s| s.prevotes.count(Some(p.hash)) >= q);
                        polka.then(|| valid && lock_permits(locked, p.hash, Some(vr)))
                    }
                    // A valid round that is not earlier than this one is malformed: wait for
                    // the propose timeout.
                    Some(_) => None,
                };
                if let Some(for_block) = prevote {
                    let hash = p.hash;
                    self.vote(VoteKind::Prevote, for_block.then_some(hash), out);
                    self.step = Step::Prevote;
                    return true;
                }
            }
        }

        let rs = &self.rounds[&round];
        // Line 34.
        if self.step == Step::Prevote && !rs.prevote_timeout_armed && rs.prevotes.total() >= q {
            self.rounds.get_mut(&round).expect("exists").prevote_timeout_armed = true;
            self.schedule(TimeoutKind::Prevote, out);
            return true;
        }

        // Line 36: a quorum of prevotes for this round's valid proposal.
        if self.step >= Step::Prevote && !rs.polka_seen {
            let polka = rs
                .proposals
                .iter()
                .map(|p| p.hash)
                .find(|h| self.valid_block_hash(h) && rs.prevotes.count(Some(*h)) >= q);
            if let Some(h) = polka {
                self.rounds.get_mut(&round).expect("exists").polka_seen = true;
                if self.step == Step::Prevote {
                    self.locked = Some((round, h));
                    self.vote(VoteKind::Precommit, Some(h), out);
                    self.step = Step::Precommit;
                }
                self.valid = Some((round, h));
                return true;
            }
        }

        let rs = &self.rounds[&round];
        // Line 44.
        if self.step == Step::Prevote && rs.prevotes.count(None) >= q {
            self.vote(VoteKind::Precommit, None, out);
            self.step = Step::Precommit;
            return true;
        }

        // Line 47.
        if !rs.precommit_timeout_armed && rs.precommits.total() >= q {
            self.rounds.get_mut(&round).expect("exists").precommit_timeout_armed = true;
            self.schedule(TimeoutKind::Precommit, out);
            return true;
        }
        false
    }
}

/// The lock tests: line 22 (`since` is None) allows v when lockedRound = −1 ∨ lockedValue = v;
/// line 28 (`since` = vr) when lockedRound ≤ vr ∨ lockedValue = v.
fn lock_permits(locked: Option<(u32, BlockHash)>, v: BlockHash, since: Option<u32>) -> bool {
    match locked {
        None => true,
        Some((locked_round, locked_value)) => locked_value == v || since.is_some_and(|vr| locked_round <= vr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{BlockHeader, Hash256, Signature};
    use crate::consensus::leader;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    fn make_block(height: u64, round: u32, producer: ValidatorIndex, prev_hash: BlockHash, salt: u64) -> Block {
        Block {
            header: BlockHeader {
                version: 1,
                height,
                prev_hash,
                merkle_root: Hash256::ZERO,
                timestamp_ms: salt,
                slot: height,
                round,
                producer,
                last_commit_hash: Hash256::ZERO,
            },
            producer_sig: Signature([0; 64]),
            txs: vec![],
            last_commit: None,
        }
    }

    fn vote(kind: VoteKind, height: u64, round: u32, block_hash: Option<BlockHash>, validator: ValidatorIndex) -> Vote {
        Vote { kind, height, round, block_hash, validator, signature: Signature([0; 64]) }
    }

    fn all(n: usize) -> Vec<ValidatorIndex> {
        (0..n as ValidatorIndex).collect()
    }

    fn ranking_for(prev_hash: &BlockHash, height: u64, n: usize) -> Vec<ValidatorIndex> {
        leader::ranking(prev_hash, height, &all(n))
    }

    /// Round r goes to `ranking[r % len]`, as the node does it.
    fn rot(ranking: Vec<ValidatorIndex>) -> impl Fn(u32) -> ValidatorIndex + Send + Sync + 'static {
        move |r| ranking[r as usize % ranking.len()]
    }

    /// Virtual time a simulation may take: hours of rounds, far beyond what any run needs.
    const RUN_LIMIT_MS: u64 = 6 * 3_600_000;

    #[derive(Clone, Debug)]
    enum Msg {
        Proposal { round: u32, block: Block, valid_round: Option<u32>, from: ValidatorIndex },
        Vote(Vote),
    }

    impl Msg {
        fn height(&self) -> u64 {
            match self {
                Msg::Proposal { block, .. } => block.height(),
                Msg::Vote(v) => v.height,
            }
        }
        fn round(&self) -> u32 {
            match self {
                Msg::Proposal { round, .. } => *round,
                Msg::Vote(v) => v.round,
            }
        }
    }

    // Test-only; a few thousand events at most.
    #[allow(clippy::large_enum_variant)]
    enum Event {
        /// `catch_up`: a reply helping a laggard, which never triggers a reply itself.
        Deliver {
            from: usize,
            to: usize,
            msg: Msg,
            catch_up: bool,
        },
        Timeout {
            node: usize,
            kind: TimeoutKind,
            height: u64,
            round: u32,
        },
        /// The node re-broadcasts its latest votes, as the node's gossip does.
        Gossip {
            node: usize,
        },
    }

    const GOSSIP_EVERY_MS: u64 = 2_000;

    /// Everything a node needs to help a laggard finish a height it already committed: the
    /// proposal and the certificate (what block sync / gossip catch-up provide in the node).
    #[derive(Clone)]
    struct Committed {
        round: u32,
        block: Block,
        proposer: ValidatorIndex,
        cert: Vec<Vote>,
    }

    /// A deterministic network of Bft machines. Messages and timers are events on a virtual
    /// clock; before `gst` messages between nodes may be dropped or delayed up to
    /// `max_delay`, after it they arrive within `post_gst_delay`.
    struct Net {
        n: usize,
        quorum: usize,
        nodes: Vec<Bft>,
        crashed: HashSet<usize>,
        byzantine: Option<usize>,
        byz_handled: HashSet<(u64, u32, Option<BlockHash>)>,
        now: u64,
        seq: u64,
        queue: BTreeMap<(u64, u64), Event>,
        rng: StdRng,
        drop_prob: f64,
        max_delay: u64,
        gst: u64,
        post_gst_delay: u64,
        /// Messages for heights a node has not reached yet (the caller's buffer).
        buffered: Vec<Vec<(usize, Msg, bool)>>,
        commits: Vec<BTreeMap<u64, Committed>>,
        target: u64,
    }

    impl Net {
        fn new(n: usize, seed: u64, target: u64) -> Self {
            let params = |i: usize| BftParams::new(n, Some(i as ValidatorIndex));
            Net {
                n,
                quorum: params(0).quorum,
                nodes: (0..n).map(|i| Bft::new(params(i))).collect(),
                crashed: HashSet::new(),
                byzantine: None,
                byz_handled: HashSet::new(),
                now: 0,
                seq: 0,
                queue: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
                drop_prob: 0.0,
                max_delay: 0,
                gst: 0,
                post_gst_delay: 0,
                buffered: vec![Vec::new(); n],
                commits: vec![BTreeMap::new(); n],
                target,
            }
        }

        fn honest(&self) -> Vec<usize> {
            (0..self.n).filter(|i| !self.crashed.contains(i) && self.byzantine != Some(*i)).collect()
        }

        fn push(&mut self, at: u64, ev: Event) {
            self.seq += 1;
            self.queue.insert((at, self.seq), ev);
        }

        fn send(&mut self, from: usize, to: usize, msg: Msg) {
            self.send_as(from, to, msg, false);
        }

        fn send_as(&mut self, from: usize, to: usize, msg: Msg, catch_up: bool) {
            let delay = if from == to {
                0
            } else if self.now < self.gst {
                if self.rng.gen_bool(self.drop_prob) {
                    return;
                }
                self.rng.gen_range(0..=self.max_delay)
            } else {
                self.rng.gen_range(0..=self.post_gst_delay)
            };
            self.push(self.now + delay, Event::Deliver { from, to, msg, catch_up });
        }

        fn broadcast(&mut self, from: usize, msg: Msg) {
            for to in 0..self.n {
                self.send(from, to, msg.clone());
            }
        }

        /// The first hash any node committed at a height (the chain everyone builds on).
        fn chain_hash(&self, height: u64) -> BlockHash {
            if height == 0 {
                return Hash256::digest(b"genesis");
            }
            self.commits.iter().find_map(|c| c.get(&height)).map(|c| c.block.hash()).expect("parent committed")
        }

        fn start(&mut self) {
            for i in self.honest() {
                self.push(GOSSIP_EVERY_MS, Event::Gossip { node: i });
                let ranking = ranking_for(&self.chain_hash(0), 1, self.n);
                let actions = self.nodes[i].start_height(1, rot(ranking));
                self.handle(i, actions);
            }
        }

        fn handle(&mut self, i: usize, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Propose { round, valid_round, valid_block } => {
                        let height = self.nodes[i].height();
                        let block = match valid_block {
                            Some(b) => b,
                            None => make_block(height, round, i as ValidatorIndex, self.chain_hash(height - 1), 0),
                        };
                        let msg = Msg::Proposal { round, block, valid_round, from: i as ValidatorIndex };
                        self.broadcast(i, msg);
                    }
                    Action::Vote { kind, round, block_hash } => {
                        let height = self.nodes[i].height();
                        self.broadcast(i, Msg::Vote(vote(kind, height, round, block_hash, i as ValidatorIndex)));
                    }
                    Action::ScheduleTimeout { kind, height, round, after_ms } => {
                        self.push(self.now + after_ms, Event::Timeout { node: i, kind, height, round });
                    }
                    Action::Commit { height, round, block, cert_votes } => {
                        self.commit(i, height, round, block, cert_votes)
                    }
                }
            }
        }

        fn commit(&mut self, i: usize, height: u64, round: u32, block: Block, cert: Vec<Vote>) {
            let hash = block.hash();
            assert!(cert.len() >= self.quorum, "certificate below quorum");
            let signers: HashSet<ValidatorIndex> = cert.iter().map(|v| v.validator).collect();
            assert_eq!(signers.len(), cert.len(), "duplicate signer in certificate");
            assert!(cert.iter().all(|v| v.kind == VoteKind::Precommit
                && v.height == height
                && v.round == round
                && v.block_hash == Some(hash)));
            // Safety: nobody committed anything else at this height.
            for (j, c) in self.commits.iter().enumerate() {
                if let Some(other) = c.get(&height) {
                    assert_eq!(
                        other.block.hash(),
                        hash,
                        "node {i} and node {j} committed different blocks at {height}"
                    );
                }
            }
            let proposer = self.nodes[i].proposer(round).expect("height started");
            assert!(self.commits[i].insert(height, Committed { round, proposer, block, cert }).is_none());
            if height < self.target {
                let ranking = ranking_for(&hash, height + 1, self.n);
                let actions = self.nodes[i].start_height(height + 1, rot(ranking));
                self.handle(i, actions);
                for (from, msg, catch_up) in std::mem::take(&mut self.buffered[i]) {
                    self.deliver(from, i, msg, catch_up);
                }
            }
        }

        fn deliver(&mut self, from: usize, to: usize, msg: Msg, catch_up: bool) {
            if self.crashed.contains(&to) {
                return;
            }
            if self.byzantine == Some(to) {
                return self.byzantine_react(msg);
            }
            let height = self.nodes[to].height();
            if msg.height() > height {
                self.buffered[to].push((from, msg, catch_up));
                return;
            }
            if msg.height() < height || (self.nodes[to].is_decided() && height == self.target) {
                // The sender is behind: help it finish that height, as gossip catch-up does.
                if let Some(c) = self.commits[to].get(&msg.height()).cloned() {
                    if from != to && !catch_up && self.byzantine != Some(from) {
                        let proposal = Msg::Proposal {
                            round: c.round,
                            block: c.block.clone(),
                            valid_round: None,
                            from: c.proposer,
                        };
                        self.send_as(to, from, proposal, true);
                        for v in c.cert {
                            self.send_as(to, from, Msg::Vote(v), true);
                        }
                    }
                }
                return;
            }
            let actions = match msg {
                Msg::Proposal { round, block, valid_round, from } => {
                    let hash = block.hash();
                    self.nodes[to].on_proposal(round, hash, block, valid_round, true, from)
                }
                Msg::Vote(v) => self.nodes[to].on_vote(&v),
            };
            self.handle(to, actions);
        }

        /// The faulty node proposes different blocks to different nodes when it leads, and
        /// sends every node two different prevotes and precommits for every round it sees.
        fn byzantine_react(&mut self, msg: Msg) {
            let b = self.byzantine.expect("byzantine");
            let (height, round) = (msg.height(), msg.round());
            let seen_hash = match &msg {
                Msg::Proposal { block, .. } => Some(block.hash()),
                Msg::Vote(v) => v.block_hash,
            };
            if height == 0 || !self.byz_handled.insert((height, round, seen_hash)) {
                return;
            }
            let Some(parent) = self
                .commits
                .iter()
                .find_map(|c| c.get(&(height - 1)))
                .map(|c| c.block.hash())
                .or_else(|| (height == 1).then(|| self.chain_hash(0)))
            else {
                return;
            };
            let ranking = ranking_for(&parent, height, self.n);
            let mut candidates = vec![None, seen_hash, Some(Hash256::digest(&self.rng.gen::<u64>().to_le_bytes()))];
            if leader::proposer(&ranking, round) == Some(b as ValidatorIndex)
                && self.byz_handled.insert((height, round, None))
            {
                let x = make_block(height, round, b as ValidatorIndex, parent, 1);
                let y = make_block(height, round, b as ValidatorIndex, parent, 2);
                candidates.extend([Some(x.hash()), Some(y.hash())]);
                for to in 0..self.n {
                    let block = if to % 2 == 0 { x.clone() } else { y.clone() };
                    self.send(b, to, Msg::Proposal { round, block, valid_round: None, from: b as ValidatorIndex });
                }
            }
            for to in 0..self.n {
                if to == b {
                    continue;
                }
                for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                    let first = self.rng.gen_range(0..candidates.len());
                    let second = (first + 1 + self.rng.gen_range(0..candidates.len() - 1)) % candidates.len();
                    for pick in [first, second] {
                        let v = vote(kind, height, round, candidates[pick], b as ValidatorIndex);
                        self.send(b, to, Msg::Vote(v));
                    }
                }
            }
        }

        fn done(&self) -> bool {
            self.honest().iter().all(|&i| self.commits[i].contains_key(&self.target))
        }

        /// Runs until every honest node committed the target height or time runs out.
        fn run(&mut self, until_ms: u64) {
            while let Some(((t, _), ev)) = self.queue.pop_first() {
                if t > until_ms || self.done() {
                    break;
                }
                self.now = t;
                match ev {
                    Event::Deliver { from, to, msg, catch_up } => self.deliver(from, to, msg, catch_up),
                    Event::Timeout { node, kind, height, round } => {
                        if !self.crashed.contains(&node) {
                            let actions = self.nodes[node].on_timeout(kind, height, round);
                            self.handle(node, actions);
                        }
                    }
                    Event::Gossip { node } => {
                        for v in self.nodes[node].own_votes() {
                            for to in (0..self.n).filter(|&to| to != node) {
                                self.send(node, to, Msg::Vote(v.clone()));
                            }
                        }
                        self.push(self.now + GOSSIP_EVERY_MS, Event::Gossip { node });
                    }
                }
            }
        }

        fn assert_all_committed_same(&self) {
            let honest = self.honest();
            // Shown only when the test fails.
            for (i, b) in self.nodes.iter().enumerate() {
                let (h, r, step, stats) = (b.height(), b.round(), b.step(), b.stats());
                eprintln!("node {i}: height {h} round {r} {step:?} commits {} {stats:?}", self.commits[i].len());
            }
            for h in 1..=self.target {
                let first = self.commits[honest[0]].get(&h).unwrap_or_else(|| panic!("height {h} not committed"));
                for &i in &honest {
                    let c = self.commits[i].get(&h).unwrap_or_else(|| panic!("node {i} missed height {h}"));
                    assert_eq!(c.block.hash(), first.block.hash());
                }
            }
        }
    }

    #[test]
    fn all_honest_commit_in_round_zero() {
        for n in [4, 5, 7] {
            let mut net = Net::new(n, n as u64, 10);
            net.start();
            net.run(RUN_LIMIT_MS);
            net.assert_all_committed_same();
            for i in 0..n {
                for (h, c) in &net.commits[i] {
                    assert_eq!(c.round, 0, "n={n} height {h} needed round {}", c.round);
                    let ranking = ranking_for(&net.chain_hash(h - 1), *h, n);
                    assert_eq!(c.block.header.producer, ranking[0]);
                }
                assert_eq!(net.nodes[i].stats().rounds_timed_out, 0);
                assert_eq!(net.nodes[i].stats().commits, 10);
            }
        }
    }

    #[test]
    fn crashed_leader_is_replaced_by_the_backup() {
        for n in [4, 5, 7] {
            let mut net = Net::new(n, 1, 1);
            let ranking = ranking_for(&net.chain_hash(0), 1, n);
            net.crashed.insert(ranking[0] as usize);
            net.start();
            net.run(RUN_LIMIT_MS);
            net.assert_all_committed_same();
            for i in net.honest() {
                let c = &net.commits[i][&1];
                assert_eq!(c.round, 1);
                assert_eq!(c.block.header.producer, ranking[1]);
                assert_eq!(net.nodes[i].stats().rounds_timed_out, 1);
            }
        }
    }

    /// Loses 30% of messages and delays the rest up to 3 s for the first minute, then
    /// delivers within 100 ms.
    fn lossy_run(n: usize, seed: u64) {
        let mut net = Net::new(n, seed, 15);
        net.drop_prob = 0.3;
        net.max_delay = 3_000;
        net.gst = 60_000;
        net.post_gst_delay = 100;
        net.start();
        // Every commit is checked for safety as it happens.
        net.run(RUN_LIMIT_MS);
        net.assert_all_committed_same();
        let timed_out: u64 = net.nodes.iter().map(|b| b.stats().rounds_timed_out).sum();
        assert!(timed_out > 0, "the loss should have cost some rounds");
    }

    /// Delays every message up to 8 s (far beyond the timeouts) for 40 s, then 300 ms.
    fn delayed_run(n: usize, seed: u64) {
        let mut net = Net::new(n, seed, 20);
        net.max_delay = 8_000;
        net.gst = 40_000;
        net.post_gst_delay = 300;
        net.start();
        net.run(RUN_LIMIT_MS);
        net.assert_all_committed_same();
    }

    /// Four validators, one of them equivocating.
    fn byzantine_run(seed: u64) {
        let mut net = Net::new(4, seed, 12);
        net.byzantine = Some(seed as usize % 4);
        net.max_delay = 200;
        net.gst = 30_000;
        net.post_gst_delay = 100;
        net.start();
        net.run(RUN_LIMIT_MS);
        net.assert_all_committed_same();
        let seen: u64 = net.honest().iter().map(|&i| net.nodes[i].stats().equivocations).sum();
        assert!(seen > 0);
        let i = net.honest()[0];
        assert!(net.nodes[i].equivocation_evidence().next().is_some());
    }

    #[test]
    fn lossy_network_stays_safe_and_recovers() {
        for (n, seed) in [(4, 11), (5, 12), (7, 13), (4, 14), (5, 15), (7, 16)] {
            lossy_run(n, seed);
        }
    }

    #[test]
    fn delayed_messages_commit_every_height() {
        for seed in 0..6u64 {
            delayed_run([4, 5, 7][seed as usize % 3], 100 + seed);
        }
    }

    #[test]
    fn one_equivocating_validator_of_four_cannot_break_safety() {
        for seed in 0..8u64 {
            byzantine_run(200 + seed);
        }
    }

    /// The same scenarios over many more seeds: `cargo test -p timed --lib bft -- --ignored`.
    #[test]
    #[ignore = "slow; run after changing the state machine"]
    fn many_seeds() {
        for seed in 1_000..1_100u64 {
            let n = [4, 5, 7][seed as usize % 3];
            lossy_run(n, seed);
            delayed_run(n, seed);
            byzantine_run(seed);
        }
    }

    // Single-machine tests of individual rules.

    fn machine(n: usize, me: ValidatorIndex) -> Bft {
        Bft::new(BftParams::new(n, Some(me)))
    }

    fn votes_of(actions: &[Action]) -> Vec<(VoteKind, u32, Option<BlockHash>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Vote { kind, round, block_hash, .. } => Some((*kind, *round, *block_hash)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn params_are_checked() {
        assert!(BftParams::new(4, Some(3)).validate().is_ok());
        assert_eq!(BftParams::new(4, None).quorum, 3);
        assert_eq!(BftParams::new(7, None).quorum, 5);
        assert_eq!(BftParams::new(4, None).honest_threshold(), 2);
        let bad = BftParams { quorum: 2, ..BftParams::new(3, None) };
        assert!(matches!(Bft::try_new(bad), Err(BftParamsError::BadQuorum { .. })));
        assert!(matches!(Bft::try_new(BftParams::new(4, Some(4))), Err(BftParamsError::BadIndex { .. })));
        assert!(matches!(Bft::try_new(BftParams::new(0, None)), Err(BftParamsError::NoValidators)));
        let p = BftParams::new(4, None);
        assert_eq!(p.timeout_ms(TimeoutKind::Propose, 2), 4000);
    }

    #[test]
    fn start_proposes_or_arms_the_timer() {
        let mut b = machine(4, 2);
        assert_eq!(b.step_name(), "idle");
        let a = b.start_height(5, rot(vec![2, 0, 1, 3]));
        assert!(matches!(a[0], Action::Propose { round: 0, valid_round: None, valid_block: None }));
        assert!(a.contains(&Action::ScheduleTimeout {
            kind: TimeoutKind::Propose,
            height: 5,
            round: 0,
            after_ms: 3000
        }));
        let mut b = machine(4, 1);
        let a = b.start_height(5, rot(vec![2, 0, 1, 3]));
        assert_eq!(
            a,
            vec![Action::ScheduleTimeout { kind: TimeoutKind::Propose, height: 5, round: 0, after_ms: 3000 }]
        );
        assert_eq!((b.height(), b.round(), b.step()), (5, 0, Step::Propose));
    }

    #[test]
    fn proposals_from_the_wrong_validator_or_invalid_blocks() {
        let mut b = machine(4, 1);
        b.start_height(1, rot(vec![0, 1, 2, 3]));
        let blk = make_block(1, 0, 3, Hash256::ZERO, 0);
        assert!(b.on_proposal(0, blk.hash(), blk, None, true, 3).is_empty());
        assert_eq!(b.stats().ignored_messages, 1);
        let blk = make_block(1, 0, 0, Hash256::ZERO, 0);
        let a = b.on_proposal(0, blk.hash(), blk, None, false, 0);
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 0, None)]);
    }

    #[test]
    fn votes_count_once_and_equivocation_is_recorded() {
        let mut b = machine(4, 0);
        b.start_height(1, rot(vec![1, 0, 2, 3]));
        let x = Some(Hash256::digest(b"x"));
        b.on_vote(&vote(VoteKind::Prevote, 1, 0, x, 2));
        b.on_vote(&vote(VoteKind::Prevote, 1, 0, x, 2));
        assert!(b.on_vote(&vote(VoteKind::Prevote, 1, 0, None, 2)).is_empty());
        assert_eq!(b.stats().equivocations, 1);
        assert_eq!(b.equivocation_evidence().next().map(|e| e.0.block_hash), Some(x));
        // One validator: once for each value, once in total.
        let pv = &b.rounds[&0].prevotes;
        assert_eq!((pv.total(), pv.count(x), pv.count(None)), (1, 1, 1));
        // An equivocator's values are capped.
        for i in 0..5u64 {
            b.on_vote(&vote(VoteKind::Prevote, 1, 0, Some(Hash256::digest(&i.to_le_bytes())), 2));
        }
        assert_eq!(b.rounds[&0].prevotes.votes[&2].len(), MAX_VALUES_PER_VOTER);
        // Wrong height and unknown validators are ignored.
        b.on_vote(&vote(VoteKind::Prevote, 2, 0, x, 3));
        b.on_vote(&vote(VoteKind::Prevote, 1, 0, x, 9));
        assert_eq!(b.stats().ignored_messages, 2);
        assert_eq!(b.rounds[&0].prevotes.total(), 1);
    }

    #[test]
    fn nil_quorum_and_timeouts_move_rounds() {
        let mut b = machine(4, 0);
        b.start_height(1, rot(vec![1, 2, 3, 0]));
        let a = b.on_timeout(TimeoutKind::Propose, 1, 0);
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 0, None)]);
        // Stale timers do nothing.
        assert!(b.on_timeout(TimeoutKind::Propose, 1, 0).is_empty());
        for v in 0..3 {
            let a = b.on_vote(&vote(VoteKind::Prevote, 1, 0, None, v));
            if v == 2 {
                // Line 34 (a quorum of anything) and line 44 (a quorum of nil).
                assert!(a.contains(&Action::ScheduleTimeout {
                    kind: TimeoutKind::Prevote,
                    height: 1,
                    round: 0,
                    after_ms: 1000
                }));
                assert_eq!(votes_of(&a), vec![(VoteKind::Precommit, 0, None)]);
            }
        }
        for v in 0..3 {
            b.on_vote(&vote(VoteKind::Precommit, 1, 0, None, v));
        }
        let a = b.on_timeout(TimeoutKind::Precommit, 1, 0);
        assert_eq!(b.round(), 1);
        assert!(a.iter().any(|x| matches!(x, Action::ScheduleTimeout { kind: TimeoutKind::Propose, round: 1, .. })));
        assert_eq!(b.stats().rounds_timed_out, 1);
    }

    #[test]
    fn skips_to_a_round_others_reached() {
        let mut b = machine(4, 0);
        b.start_height(1, rot(vec![1, 2, 3, 0]));
        // One validator far ahead is not enough (it may be faulty)...
        b.on_vote(&vote(VoteKind::Prevote, 1, 40, None, 1));
        assert_eq!(b.round(), 0);
        // ...two are (f + 1 = 2 for n = 4), even beyond the stored window.
        b.on_vote(&vote(VoteKind::Precommit, 1, 30, None, 2));
        assert_eq!(b.round(), 30);
        assert_eq!(b.stats().round_skips, 1);
    }

    fn locked(b: &Bft) -> Option<(u32, BlockHash)> {
        b.locked_block().map(|(r, blk)| (r, blk.hash()))
    }

    /// Feeds precommits for nil from 0, 1, 2 and fires the precommit timeout: next round.
    fn fail_round(b: &mut Bft, round: u32) -> Vec<Action> {
        for v in [0, 1, 2] {
            b.on_vote(&vote(VoteKind::Precommit, 1, round, None, v));
        }
        b.on_timeout(TimeoutKind::Precommit, 1, round)
    }

    #[test]
    fn a_lock_gives_way_only_to_a_later_polka() {
        // n = 4, this node is 3; rounds are led by 0, 1, 2, 3.
        let mut b = machine(4, 3);
        b.start_height(1, rot(vec![0, 1, 2, 3]));
        // Round 0: prevote X, see a polka for X, lock X.
        let x = make_block(1, 0, 0, Hash256::ZERO, 0);
        let xh = x.hash();
        let a = b.on_proposal(0, xh, x, None, true, 0);
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 0, Some(xh))]);
        for v in [0, 1, 3] {
            b.on_vote(&vote(VoteKind::Prevote, 1, 0, Some(xh), v));
        }
        assert_eq!(locked(&b), Some((0, xh)));
        assert_eq!(b.valid_block().map(|(r, _)| r), Some(0));
        assert_eq!(b.step(), Step::Precommit);
        fail_round(&mut b, 0);
        // Round 1: a fresh Y is refused while locked on X (line 22).
        let y = make_block(1, 1, 1, Hash256::ZERO, 0);
        let yh = y.hash();
        let a = b.on_proposal(1, yh, y.clone(), None, true, 1);
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 1, None)]);
        fail_round(&mut b, 1);
        // Round 2 re-proposes Y with valid_round 1. Without the round-1 polka it waits...
        assert!(votes_of(&b.on_proposal(2, yh, y.clone(), Some(1), true, 2)).is_empty());
        // ...and once the polka arrives, lockedRound 0 <= 1 lets it prevote Y (line 28).
        let mut a = Vec::new();
        for v in [0, 1, 2] {
            a.extend(b.on_vote(&vote(VoteKind::Prevote, 1, 1, Some(yh), v)));
        }
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 2, Some(yh))]);
        assert_eq!(locked(&b), Some((0, xh)), "a polka of an earlier round does not relock");
        // A round-2 polka for Y relocks (line 36).
        let mut a = Vec::new();
        for v in [0, 1, 2] {
            a.extend(b.on_vote(&vote(VoteKind::Prevote, 1, 2, Some(yh), v)));
        }
        assert_eq!(votes_of(&a), vec![(VoteKind::Precommit, 2, Some(yh))]);
        assert_eq!(locked(&b), Some((2, yh)));
        // Leading round 3, this node re-proposes its valid value.
        let a = fail_round(&mut b, 2);
        match &a[0] {
            Action::Propose { round: 3, valid_round: Some(2), valid_block: Some(blk) } => assert_eq!(blk.hash(), yh),
            other => panic!("expected a re-proposal, got {other:?}"),
        }
    }

    #[test]
    fn a_polka_older_than_the_lock_is_refused() {
        let mut b = machine(4, 3);
        b.start_height(1, rot(vec![0, 1, 2, 3]));
        // Round 0 passes without a proposal.
        b.on_timeout(TimeoutKind::Propose, 1, 0);
        fail_round(&mut b, 0);
        // Round 1: lock X1.
        let x1 = make_block(1, 1, 1, Hash256::ZERO, 0);
        let x1h = x1.hash();
        b.on_proposal(1, x1h, x1, None, true, 1);
        for v in [0, 1, 2] {
            b.on_vote(&vote(VoteKind::Prevote, 1, 1, Some(x1h), v));
        }
        assert_eq!(locked(&b), Some((1, x1h)));
        fail_round(&mut b, 1);
        // Round 2 re-proposes X0 with a genuine round-0 polka: older than the lock, so nil.
        let x0 = make_block(1, 0, 0, Hash256::ZERO, 0);
        let x0h = x0.hash();
        for v in [0, 1, 2] {
            b.on_vote(&vote(VoteKind::Prevote, 1, 0, Some(x0h), v));
        }
        let a = b.on_proposal(2, x0h, x0, Some(0), true, 2);
        assert_eq!(votes_of(&a), vec![(VoteKind::Prevote, 2, None)]);
        assert_eq!(locked(&b), Some((1, x1h)));
    }

    #[test]
    fn own_votes_are_available_for_regossip() {
        let mut b = machine(4, 3);
        b.start_height(1, rot(vec![0, 1, 2, 3]));
        assert!(b.own_votes().is_empty());
        b.on_timeout(TimeoutKind::Propose, 1, 0);
        // The caller feeds its own vote back; only then can it be re-sent.
        b.on_vote(&vote(VoteKind::Prevote, 1, 0, None, 3));
        b.on_vote(&vote(VoteKind::Prevote, 1, 0, None, 1));
        let mine = b.own_votes();
        assert_eq!(mine.len(), 1);
        assert_eq!((mine[0].validator, mine[0].kind), (3, VoteKind::Prevote));
        // Still the latest ones after moving to a round without votes yet.
        fail_round(&mut b, 0);
        assert_eq!(b.round(), 1);
        assert_eq!(b.own_votes().len(), 1);
    }

    #[test]
    fn observer_commits_without_voting() {
        let mut b = Bft::new(BftParams::new(4, None));
        assert!(b.start_height(1, rot(vec![0, 1, 2, 3])).iter().all(|a| matches!(a, Action::ScheduleTimeout { .. })));
        let x = make_block(1, 0, 0, Hash256::ZERO, 0);
        let xh = x.hash();
        // Precommits first, the block later: it commits once it has both.
        for v in [0, 1, 2] {
            assert!(votes_of(&b.on_vote(&vote(VoteKind::Precommit, 1, 0, Some(xh), v))).is_empty());
        }
        let a = b.on_proposal(0, xh, x, None, true, 0);
        let commit = a.iter().find_map(|x| match x {
            Action::Commit { height, round, block, cert_votes } => {
                Some((*height, *round, block.hash(), cert_votes.len()))
            }
            _ => None,
        });
        assert_eq!(commit, Some((1, 0, xh, 3)));
        assert!(votes_of(&a).is_empty());
        assert!(b.is_decided());
        // Nothing more happens at this height.
        assert!(b.on_vote(&vote(VoteKind::Precommit, 1, 0, Some(xh), 3)).is_empty());
    }
}
