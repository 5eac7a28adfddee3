//! Liveness: this node's heartbeats, and checking and attesting those of others.

use super::*;

impl Engine {
    pub(super) fn send_heartbeat(&mut self) {
        let hb = {
            let mut st = self.s.state();
            st.heartbeat_seq += 1;
            st.counters.heartbeats_sent += 1;
            let hb = Heartbeat::new_signed(self.s.me, st.heartbeat_seq, now_ms(), &self.s.key, self.s.chain_id());
            st.heartbeats.on_heartbeat(&hb, now_ms());
            hb
        };
        self.s.broadcast(Message::Heartbeat(hb.clone()));
        self.last_heartbeat = Some(hb);
    }

    pub(super) fn on_heartbeat(&mut self, hb: Heartbeat) {
        let Some(pk) = self.s.ledger.pubkeys.get(hb.validator as usize) else { return };
        if hb.validator == self.s.me || !hb.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return;
        }
        let now = now_ms();
        let att = {
            let mut st = self.s.state();
            if !st.heartbeats.on_heartbeat(&hb, now) {
                return;
            }
            let att = Attestation::new_signed(&hb, self.s.me, &self.s.key, self.s.chain_id());
            st.heartbeats.on_attestation(&att, now);
            st.counters.attestations_given += 1;
            att
        };
        self.s.broadcast(Message::Attestation(att));
    }

    pub(super) fn on_attestation(&mut self, a: Attestation) {
        let Some(pk) = self.s.ledger.pubkeys.get(a.witness as usize) else { return };
        if !a.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return;
        }
        self.s.state().heartbeats.on_attestation(&a, now_ms());
    }
}
