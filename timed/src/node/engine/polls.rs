//! Snowball polls: sampling validators, asking about undecided transactions, tallying the
//! answers, and answering other validators' polls.

use super::*;

impl Engine {
    /// Validators to sample: active by heartbeat, connected, not us, and enough of them that a
    /// poll speaks for more than two thirds of the validators with us.
    pub(super) fn sampleable(&self) -> Vec<ValidatorIndex> {
        let connected: HashSet<ValidatorIndex> = self.s.p2p.connected().into_iter().collect();
        let active = self.s.state().heartbeats.active_set(now_ms());
        let pool: Vec<ValidatorIndex> =
            active.into_iter().filter(|v| *v != self.s.me && connected.contains(v)).collect();
        if pool.len() + 1 < self.s.ledger.genesis.quorum() {
            return vec![];
        }
        pool
    }

    /// The poll tick: finishes polls past their deadline, then starts one if there is room.
    pub(super) fn poll_round(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self.polls.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.finish_poll(id);
        }
        self.start_poll();
        if self.polls.is_empty() && self.s.state().snowball.undecided_len() == 0 {
            self.poll_work = false;
        }
    }

    /// Sends a poll about undecided transactions no poll in flight asks about, if fewer than
    /// `max_concurrent_polls` are in flight.
    pub(super) fn start_poll(&mut self) {
        if self.n() == 1 {
            return;
        }
        let now = Instant::now();
        let params = self.s.cfg.avalanche.clone();
        if self.polls.len() >= params.max_concurrent_polls {
            return;
        }
        let pool = self.sampleable();
        if pool.is_empty() {
            return;
        }
        // What other polls in flight ask about is skipped before the cap, so with more than
        // `batch_max` undecided the concurrent polls cover different transactions (before, every
        // poll took the oldest `batch_max` and found them all in flight: one poll at a time).
        let batch: Vec<Txid> = {
            let st = self.s.state();
            let (in_flight, relay) = (&self.in_flight, &self.relay);
            // Not what still waits to be relayed: the peers would not know it yet.
            st.snowball
                .batch_where(params.batch_max.min(MAX_POLL_TXIDS), |t| !in_flight.contains(t) && !relay.contains(t))
        };
        if batch.is_empty() {
            return;
        }
        let (k, _, _) = params.effective(pool.len());
        let weights: Vec<(ValidatorIndex, u64)> =
            pool.iter().map(|v| (*v, self.s.ledger.genesis.validators[*v as usize].tier.sampling_weight())).collect();
        let mut rng = rand::thread_rng();
        let asked: Vec<ValidatorIndex> = match weights.choose_multiple_weighted(&mut rng, k, |(_, w)| *w as f64) {
            Ok(it) => it.map(|(v, _)| *v).collect(),
            Err(_) => pool.choose_multiple(&mut rng, k).copied().collect(),
        };
        let id = self.next_poll_id;
        self.next_poll_id += 1;
        let sent = self.s.p2p.send_to_each(&asked, &Message::PollQuery { id, txids: batch.clone() });
        self.s.state().counters.polls_sent += 1;
        if sent == 0 {
            self.s.state().counters.polls_failed += 1;
            return;
        }
        self.s.metrics.poll_txids.inc_by(batch.len() as u64);
        self.in_flight.extend(batch.iter().copied());
        self.polls.insert(
            id,
            Poll {
                txids: batch,
                asked,
                replies: HashMap::new(),
                deadline: now + Duration::from_millis(params.poll_timeout_ms),
                sent_at: now,
                k,
            },
        );
    }

    pub(super) fn on_poll_reply(&mut self, from: ValidatorIndex, id: u64, prefs: Vec<Preference>) {
        let done = match self.polls.get_mut(&id) {
            Some(p) if p.asked.contains(&from) && prefs.len() == p.txids.len() => {
                p.replies.insert(from, prefs);
                p.replies.len() == p.asked.len()
            }
            _ => false,
        };
        if done {
            let progressed = self.finish_poll(id);
            // While what is undecided fits in one poll, the next poll goes out now, not at the
            // next tick: a transaction's `beta` polls then take `beta` round trips, not `beta`
            // intervals (docs/consensus.md). Past that the tick paces polls, which measured
            // better under overload. Only a poll that every validator answered and that made
            // progress gets here: polls about what peers do not know (or refuse) wait for the
            // tick, so they cannot spin at the speed of the round trip.
            let batch_max = self.s.cfg.avalanche.batch_max.min(MAX_POLL_TXIDS);
            if progressed && self.s.state().snowball.undecided_len() <= batch_max {
                self.start_poll();
            }
        }
    }

    /// Applies a poll's answers. True when at least one of its transactions had a successful
    /// poll (`alpha_confidence` Yes votes): the poll made progress.
    pub(super) fn finish_poll(&mut self, id: u64) -> bool {
        let Some(poll) = self.polls.remove(&id) else { return false };
        for t in &poll.txids {
            self.in_flight.remove(t);
        }
        if poll.replies.len() < poll.asked.len() {
            self.s.state().counters.polls_failed += 1;
        } else {
            self.s.metrics.poll_round_trip.observe(poll.sent_at.elapsed().as_secs_f64());
        }
        let results: Vec<(Txid, usize)> = poll
            .txids
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, poll.replies.values().filter(|p| p[i] == Preference::Yes).count()))
            .collect();
        let params = &self.s.cfg.avalanche;
        let (k, ap, ac) = params.effective(poll.k);
        let progressed = results.iter().any(|(_, yes)| *yes >= ac);
        let decisions = self.s.state().snowball.record_poll(&results, k, ap, ac);
        if !decisions.rejected.is_empty() {
            let mut st = self.s.state();
            for t in &decisions.rejected {
                st.mempool.reject(t, TxError::Conflict);
            }
            drop(st);
            self.s.metrics.tx_rejected.inc_by(decisions.rejected.len() as u64);
            self.drop_orphans(&decisions.rejected);
        }
        self.accept(&decisions.accepted);
        if !decisions.rejected.is_empty() {
            self.s.finality_changed.notify_waiters();
        }
        progressed
    }

    pub(super) fn answer_poll(&mut self, from: ValidatorIndex, id: u64, txids: Vec<Txid>) {
        if txids.len() > MAX_POLL_TXIDS {
            return;
        }
        let prefs = answer(&self.s, &txids);
        self.s.p2p.send(from, Message::PollReply { id, prefs });
    }
}

/// This node's answer to a poll: read-only, so P2P runs it in the connection's reader task
/// (see [`Answerer`]) instead of queueing it behind the engine.
pub fn answer(s: &Shared, txids: &[Txid]) -> Vec<Preference> {
    let mut unknown = Vec::new();
    let mut prefs: Vec<Preference> = {
        let mut st = s.state();
        st.counters.queries_answered += 1;
        txids
            .iter()
            .enumerate()
            .map(|(i, t)| {
                // Snowball first: it says Yes for nearly every txid asked, and a pool entry
                // that is final only turns what Snowball does not say Yes to into a Yes.
                let p = st.snowball.preference(t);
                if p == Preference::Yes
                    || st.mempool.get(t).is_some_and(|e| matches!(e.status, TxStatus::Finalized { .. }))
                {
                    return Preference::Yes;
                }
                match p {
                    Preference::Unknown if st.mempool.rejection(t).is_some() => Preference::No,
                    Preference::Unknown => {
                        unknown.push(i);
                        Preference::Unknown
                    }
                    p => p,
                }
            })
            .collect()
    };
    // Mined transactions are answered from the store after the lock is released: a store read
    // must not hold up the engine. Mined is final, so the answer cannot go stale.
    let asked: Vec<Txid> = unknown.iter().map(|&i| txids[i]).collect();
    if let Ok(mined) = s.ledger.store.in_chain(&asked) {
        for (i, mined) in unknown.into_iter().zip(mined) {
            if mined {
                prefs[i] = Preference::Yes;
            }
        }
    }
    prefs
}

/// Answers polls for the P2P reader tasks. Holds the node weakly: the node owns the transport.
pub struct Answerer(pub std::sync::Weak<Shared>);

impl crate::p2p::PollAnswerer for Answerer {
    fn answer(&self, _from: ValidatorIndex, txids: &[Txid]) -> Vec<Preference> {
        match self.0.upgrade() {
            Some(s) => answer(&s, txids),
            // Shutting down: nothing is known any more.
            None => vec![Preference::Unknown; txids.len()],
        }
    }
}
