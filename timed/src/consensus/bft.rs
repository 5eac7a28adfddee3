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
use crate::p2p::message::{Vote, VoteKind};
use std::collections::{BTreeMap, HashMap};

/// Rounds ahead of the current one whose messages are stored in full. Votes further ahead
/// still count towards skipping rounds (line 55), so a node far behind catches up.
pub const FUTURE_ROUND_WINDOW: u32 = 16;

/// Distinct proposals kept per round. Only the round's proposer can fill this, and an honest
/// one sends one; the second lets a node still commit what an equivocating proposer got
/// through.
const MAX_PROPOSALS_PER_ROUND: usize = 2;

/// Equivocation evidence kept for inspection.
const MAX_EVIDENCE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// This node proposes for `round`. With `block` set, re-broadcast that block (the valid
    /// value) with `valid_round`; otherwise build and sign a new block. Either way feed the
    /// proposal back through `on_proposal`.
    Propose { height: u64, round: u32, valid_round: Option<u32>, block: Option<Box<Block>> },
    /// Sign and broadcast this vote, and feed it back through `on_vote`.
    Vote { kind: VoteKind, height: u64, round: u32, block_hash: Option<BlockHash> },
    /// Call `on_timeout(kind, height, round)` after `after_ms`.
    ScheduleTimeout { kind: TimeoutKind, height: u64, round: u32, after_ms: u64 },
    /// The height is decided: `cert_votes` are at least a quorum of precommits for `block`
    /// in `round`. Happens once per height.
    Commit { height: u64, round: u32, block: Box<Block>, cert_votes: Vec<Vote> },
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

/// One kind of vote in one round: the first vote of each validator, tallied by value.
#[derive(Default)]
struct VoteSet {
    votes: BTreeMap<ValidatorIndex, Vote>,
    tally: HashMap<Option<BlockHash>, usize>,
}

enum Added {
    New,
    Duplicate,
    /// The validator's earlier, different vote.
    Conflict(Vote),
}

impl VoteSet {
    fn add(&mut self, vote: &Vote) -> Added {
        if let Some(prev) = self.votes.get(&vote.validator) {
            return if prev.block_hash == vote.block_hash { Added::Duplicate } else { Added::Conflict(prev.clone()) };
        }
        self.votes.insert(vote.validator, vote.clone());
        *self.tally.entry(vote.block_hash).or_default() += 1;
        Added::New
    }

    fn total(&self) -> usize {
        self.votes.len()
    }

    fn count(&self, value: Option<BlockHash>) -> usize {
        self.tally.get(&value).copied().unwrap_or(0)
    }

    fn votes_for(&self, value: Option<BlockHash>) -> Vec<Vote> {
        self.votes.values().filter(|v| v.block_hash == value).cloned().collect()
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

pub struct Bft {
    params: BftParams,
    height: u64,
    round: u32,
    step: Step,
    ranking: Vec<ValidatorIndex>,
    /// (round, block hash): lockedRound/lockedValue and validRound/validValue.
    locked: Option<(u32, BlockHash)>,
    valid: Option<(u32, BlockHash)>,
    blocks: HashMap<BlockHash, StoredBlock>,
    rounds: BTreeMap<u32, RoundState>,
    /// Highest round each validator sent a vote in, this height (for line 55).
    max_round_seen: HashMap<ValidatorIndex, u32>,
    stats: BftStats,
    evidence: Vec<(Vote, Vote)>,
}

impl Bft {
    pub fn new(params: BftParams) -> Result<Self, BftParamsError> {
        params.validate()?;
        Ok(Bft {
            params,
            height: 0,
            round: 0,
            step: Step::Idle,
            ranking: Vec::new(),
            locked: None,
            valid: None,
            blocks: HashMap::new(),
            rounds: BTreeMap::new(),
            max_round_seen: HashMap::new(),
            stats: BftStats::default(),
            evidence: Vec::new(),
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

    /// Pairs of conflicting votes by one validator (the first vote, then the other).
    pub fn equivocation_evidence(&self) -> &[(Vote, Vote)] {
        &self.evidence
    }

    pub fn is_decided(&self) -> bool {
        self.step == Step::Committed
    }

    /// The proposer of `round` at this height.
    pub fn proposer(&self, round: u32) -> Option<ValidatorIndex> {
        super::leader::proposer(&self.ranking, round)
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
    /// proposed by `ranking[r % len]` (see [`super::leader::ranking`]).
    pub fn start_height(&mut self, height: u64, ranking: Vec<ValidatorIndex>) -> Vec<Action> {
        self.height = height;
        self.ranking = ranking;
        self.locked = None;
        self.valid = None;
        self.blocks.clear();
        self.rounds.clear();
        self.max_round_seen.clear();
        self.evidence.clear();
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
        if block.height() != self.height || self.proposer(round) != Some(from) {
            self.stats.ignored_messages += 1;
            return out;
        }
        if round > self.round.saturating_add(FUTURE_ROUND_WINDOW) {
            return out;
        }
        debug_assert_eq!(block.hash(), block_hash, "caller passed a hash of another block");
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
        self.blocks.entry(block_hash).or_insert(StoredBlock { block, valid: is_valid });
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
                    if self.evidence.len() < MAX_EVIDENCE {
                        self.evidence.push((first, vote.clone()));
                    }
                    return out;
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
                let (valid_round, block) = match self.valid {
                    Some((vr, h)) => (Some(vr), self.blocks.get(&h).map(|b| Box::new(b.block.clone()))),
                    None => (None, None),
                };
                out.push(Action::Propose { height: self.height, round, valid_round, block });
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
            out.push(Action::Vote { kind, height: self.height, round: self.round, block_hash });
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
            out.push(Action::Commit { height: self.height, round: r, block: Box::new(block), cert_votes });
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
