//! Block agreement: one height at a time, Tendermint-style rounds over TSDC slots (the
//! `consensus::bft` state machine driven with timers, proposals, votes and commits).

use super::*;

impl Engine {
    /// Prepares the next height: its slot's ranking, and when round 0 may begin.
    pub(super) fn schedule_height(&mut self) -> anyhow::Result<()> {
        self.started = false;
        self.own_proposal = None;
        self.seen.clear();
        self.height = self.parent.height() + 1;
        self.ranking = self.s.ledger.ranking_after(&self.parent)?;
        let slot = self.s.ledger.slot_after(&self.parent.header);
        let start_ms = self.s.ledger.genesis.slot_start_ms(slot);
        let now = now_ms();
        {
            let mut st = self.s.state();
            st.view.height = self.height;
            st.view.round = 0;
            st.view.slot = slot;
            st.view.leader = self.ranking.first().copied();
            st.view.step = "waiting-for-slot".into();
        }
        let at = Instant::now() + Duration::from_millis(start_ms.saturating_sub(now));
        self.timers.push(Reverse((at, Timer::StartHeight(self.height))));
        Ok(())
    }

    pub(super) fn start_height(&mut self) -> anyhow::Result<()> {
        self.started = true;
        self.height_started_at = Instant::now();
        let ranking = self.ranking.clone();
        let actions = self.bft.start_height(self.height, move |r| ranking[r as usize % ranking.len()]);
        self.apply(actions)?;
        // Messages that arrived early for this height.
        let buffered = std::mem::take(&mut self.buffered);
        for (from, msg) in buffered {
            self.on_consensus(from, msg)?;
        }
        Ok(())
    }

    pub(super) fn apply(&mut self, actions: Vec<Action>) -> anyhow::Result<()> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            tracing::trace!(height = self.height, action = ?ActionSummary(&a), "bft action");
            let more = match a {
                Action::Propose { round, valid_round, valid_block } => self.propose(round, valid_round, valid_block)?,
                Action::Vote { kind, round, block_hash } => {
                    let vote = Vote::new_signed(
                        kind,
                        self.height,
                        round,
                        block_hash,
                        self.s.me,
                        &self.s.key,
                        self.s.chain_id(),
                    );
                    self.s.broadcast(Message::Vote(vote.clone()));
                    self.bft.on_vote(&vote)
                }
                Action::ScheduleTimeout { kind, height, round, after_ms } => {
                    let at = Instant::now() + Duration::from_millis(after_ms);
                    self.timers.push(Reverse((at, Timer::Bft(kind, height, round))));
                    if kind == TimeoutKind::Propose {
                        let mut st = self.s.state();
                        st.view.round = round;
                        st.view.leader = Some(self.ranking[round as usize % self.ranking.len()]);
                    }
                    vec![]
                }
                Action::Commit { height, round, block, cert_votes } => {
                    let cert = CommitCert {
                        height,
                        round,
                        block_hash: block.hash(),
                        votes: cert_votes.iter().map(|v| (v.validator, v.signature)).collect(),
                    };
                    self.commit(block, cert)?;
                    return Ok(());
                }
            };
            queue.extend(more);
        }
        // Until the next height starts, the machine still holds the finished one's step.
        let step = if self.started { self.bft.step_name() } else { "waiting-for-slot" };
        self.s.state().view.step = step.to_string();
        Ok(())
    }

    pub(super) fn propose(
        &mut self,
        round: u32,
        valid_round: Option<u32>,
        valid_block: Option<Block>,
    ) -> anyhow::Result<Vec<Action>> {
        let block = match valid_block {
            Some(b) => b,
            None => {
                let candidates = self.s.state().mempool.block_candidates(crate::chain::block::MAX_BLOCK_SIZE / 2);
                self.s.ledger.build_block(
                    &self.parent,
                    round,
                    self.s.me,
                    &self.s.key,
                    candidates,
                    self.last_commit.clone(),
                    now_ms(),
                    &self.verified_in_pool(),
                )?
            }
        };
        tracing::debug!(height = self.height, round, hash = %block.hash(), txs = block.txs.len(), "proposing");
        self.s.state().view.blocks_produced += 1;
        let msg = Message::Proposal(Box::new(Proposal { round, block: block.clone(), valid_round }));
        self.s.broadcast(msg.clone());
        self.own_proposal = Some(msg);
        let hash = block.hash();
        Ok(self.bft.on_proposal(round, hash, block, valid_round, true, self.s.me))
    }

    /// What this node said at the current height and round, for re-sending.
    pub(super) fn own_consensus_msgs(&self) -> Vec<Message> {
        if !self.started {
            return vec![];
        }
        let current = |m: &Message| matches!(m, Message::Proposal(p) if p.round == self.bft.round());
        let mut v: Vec<Message> = self.own_proposal.iter().filter(|m| current(m)).cloned().collect();
        v.extend(self.bft.own_votes().into_iter().map(Message::Vote));
        v
    }

    /// True the first time a given message is seen at this height.
    pub(super) fn first_sight(&mut self, msg: &Message) -> bool {
        let digest = match msg {
            Message::Vote(v) => crate::chain::Hash256::digest(&bincode::serialize(v).expect("encodable")),
            Message::Proposal(p) => crate::chain::Hash256::tagged(
                "proposal",
                &[&p.round.to_le_bytes(), &p.block.hash().0, &bincode::serialize(&p.valid_round).expect("encodable")],
            ),
            _ => return true,
        };
        self.seen.insert(digest)
    }

    pub(super) fn finalized_conflict(&self) -> impl Fn(&Transaction) -> bool + '_ {
        move |tx: &Transaction| {
            let st = self.s.state();
            let txid = tx.txid();
            tx.inputs.iter().any(|i| st.mempool.finalized_spender(&i.prevout).is_some_and(|t| t != txid))
        }
    }

    /// Whether this exact transaction (witnesses included) is pooled here: everything in the
    /// pool had its signatures checked on the way in, so a block need not check them again.
    pub(super) fn verified_in_pool(&self) -> impl Fn(&Transaction) -> bool + '_ {
        move |tx: &Transaction| self.s.state().mempool.get(&tx.txid()).is_some_and(|e| e.tx == *tx)
    }

    pub(super) fn on_proposal(&mut self, from: ValidatorIndex, p: Proposal) -> anyhow::Result<()> {
        let h = &p.block.header;
        let round = p.round;
        let expected = self.ranking[round as usize % self.ranking.len()];
        // A fresh block is made in its own round; a re-proposed one in an earlier round.
        if from != expected || h.round > round || (p.valid_round.is_none() && h.round != round) {
            tracing::debug!(
                from,
                producer = h.producer,
                expected,
                round,
                "proposal from a validator that does not lead this round"
            );
            return Ok(());
        }
        let valid = match self.s.ledger.check_block_with(
            &p.block,
            &self.parent,
            Some(now_ms()),
            &self.finalized_conflict(),
            &self.verified_in_pool(),
        ) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(height = h.height, round, producer = h.producer, "invalid proposal: {err}");
                false
            }
        };
        let hash = p.block.hash();
        let actions = self.bft.on_proposal(round, hash, p.block, p.valid_round, valid, from);
        self.apply(actions)
    }

    pub(super) fn on_vote(&mut self, vote: Vote) -> anyhow::Result<()> {
        let Some(pk) = self.s.ledger.pubkeys.get(vote.validator as usize) else { return Ok(()) };
        if !vote.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return Ok(());
        }
        // A late precommit for the block just committed strengthens the next last-commit.
        if vote.kind == VoteKind::Precommit && vote.height + 1 == self.height {
            if let Some(cert) = &mut self.last_commit {
                if cert.round == vote.round
                    && vote.block_hash == Some(cert.block_hash)
                    && !cert.votes.iter().any(|(v, _)| *v == vote.validator)
                {
                    cert.votes.push((vote.validator, vote.signature));
                    cert.votes.sort_by_key(|(v, _)| *v);
                }
            }
            return Ok(());
        }
        let actions = self.bft.on_vote(&vote);
        self.apply(actions)
    }

    /// Routes a proposal or vote: now, buffered for the next height, or dropped.
    pub(super) fn on_consensus(&mut self, from: ValidatorIndex, msg: Message) -> anyhow::Result<()> {
        let height = match &msg {
            Message::Proposal(p) => p.block.header.height,
            Message::Vote(v) => v.height,
            _ => return Ok(()),
        };
        if height == self.height && self.started {
            if !self.first_sight(&msg) {
                return Ok(());
            }
            match msg {
                Message::Proposal(p) => self.on_proposal(from, *p)?,
                Message::Vote(v) => self.on_vote(v)?,
                _ => {}
            }
        } else if height == self.height || (height + 1 == self.height && matches!(msg, Message::Vote(_))) {
            if height + 1 == self.height {
                if let Message::Vote(v) = msg {
                    return self.on_vote(v);
                }
            } else if self.buffered.len() < MAX_BUFFERED {
                self.buffered.push((from, msg));
            }
        } else if height > self.height {
            // Someone is ahead: fetch what we miss instead of guessing.
            self.peer_heights.entry(from).and_modify(|h| *h = (*h).max(height - 1)).or_insert(height - 1);
            self.request_sync();
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, block: Block, cert: CommitCert) -> anyhow::Result<()> {
        let height = block.height();
        let interval_s = block.header.timestamp_ms.saturating_sub(self.parent.header.timestamp_ms) as f64 / 1000.0;
        self.s.ledger.store.commit_block(&block, &cert)?;
        tracing::info!(height, hash = %block.hash(), round = cert.round, txs = block.txs.len() - 1, "block committed");
        // The genesis time is fixed in the past: the first interval says nothing about pace.
        if self.parent.height() > 0 {
            self.s.metrics.block_interval.observe(interval_s);
        }
        {
            let mut st = self.s.state();
            let txs = &block.txs[1..];
            // A transaction a block settles before this node's own polls did becomes final
            // here now: clients (and `timectl bench`) get this node's time, not none.
            let now = now_ms();
            let txids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
            // Final on this node from now, unless its own polls made it so already (and counted
            // it): every node counts every transaction once, whichever came first.
            let mut settled_here = 0u64;
            for txid in &txids {
                let entry = st.mempool.get(txid);
                if !entry.is_some_and(|e| matches!(e.status, TxStatus::Finalized { .. })) {
                    settled_here += 1;
                }
                let pending = entry.filter(|e| e.status == TxStatus::Pending);
                if let Some(seen) = pending.map(|e| e.first_seen_ms) {
                    let time = crate::node::FinalityTime { latency_ms: now.saturating_sub(seen), at_ms: now };
                    st.remember_finality(*txid, time);
                }
            }
            self.s.metrics.tx_finalized.inc_by(settled_here);
            let conflicted = st.mempool.remove_for_block(txs);
            for txid in &txids {
                // A block settles it: Snowball can forget the transaction.
                st.snowball.accept_external(txid);
                st.snowball.remove(txid);
            }
            for t in &conflicted {
                st.snowball.remove(t);
            }
            st.view.blocks_committed += 1;
            st.view.last_block_ms = block.header.timestamp_ms;
        }
        for tx in &block.txs[1..] {
            self.adopt_orphans(&tx.txid());
        }
        self.s.finality_changed.notify_waiters();
        let _ = self.s.tip.send_replace(height);
        self.last_commit = Some(cert);
        self.parent = block;
        self.announce_tip();
        self.buffered.retain(|(_, m)| match m {
            Message::Proposal(p) => p.block.header.height > height,
            Message::Vote(v) => v.height > height,
            _ => false,
        });
        self.schedule_height()
    }

    pub(super) fn fire_timers(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::StartHeight(h) if h == self.height && !self.started => self.start_height()?,
                Timer::Bft(kind, h, r) if h == self.height && self.started => {
                    tracing::trace!(height = h, round = r, ?kind, "timeout fired");
                    if kind == TimeoutKind::Propose {
                        self.s.state().view.rounds_timed_out += 1;
                    }
                    let actions = self.bft.on_timeout(kind, h, r);
                    self.apply(actions)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
