//! Catching up: fetching committed blocks with their certificates from a peer that is ahead.

use super::*;

impl Engine {
    pub(super) fn request_sync(&mut self) {
        if let Some((_, at)) = self.sync_inflight {
            if at.elapsed() < SYNC_TIMEOUT {
                return;
            }
        }
        let tip = self.parent.height();
        let connected: HashSet<ValidatorIndex> = self.s.p2p.connected().into_iter().collect();
        let best = self
            .peer_heights
            .iter()
            .filter(|(p, h)| **h > tip && connected.contains(p))
            .max_by_key(|(_, h)| **h)
            .map(|(p, h)| (*p, *h));
        if let Some((peer, h)) = best {
            let to = h.min(tip + MAX_BLOCKS_PER_REPLY);
            if self.s.p2p.send(peer, Message::GetBlocks { from: tip + 1, to }) {
                self.sync_inflight = Some((peer, Instant::now()));
                tracing::debug!(peer, from = tip + 1, to, "requesting blocks");
            }
        }
    }

    pub(super) fn on_blocks(&mut self, from: ValidatorIndex, blocks: Vec<(Block, CommitCert)>) -> anyhow::Result<()> {
        if self.sync_inflight.is_some_and(|(p, _)| p == from) {
            self.sync_inflight = None;
        }
        let quorum = self.s.ledger.genesis.quorum();
        for (block, cert) in blocks {
            if block.height() != self.parent.height() + 1 {
                continue;
            }
            let hash = block.hash();
            if cert.height != block.height()
                || cert.block_hash != hash
                || !verify_cert(&cert, &self.s.ledger.pubkeys, quorum, self.s.chain_id())
            {
                tracing::warn!(from, height = block.height(), "synced block without a valid commit certificate");
                return Ok(());
            }
            if let Err(err) = self.s.ledger.check_block(&block, &self.parent, None, &|_| false) {
                tracing::warn!(from, height = block.height(), "synced block is invalid: {err}");
                return Ok(());
            }
            // The certificate proves a quorum committed it; `start_height` of the next height
            // discards whatever this node's own round had.
            self.commit(block, cert)?;
        }
        self.request_sync();
        Ok(())
    }
}
