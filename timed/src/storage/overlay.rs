//! Transaction-index entries and unspent-output changes held in memory for a few blocks before
//! they are written to the `tx_index`, `utxos` and `address_index` tables.
//!
//! Why: writing each block's entries to those tables was a quarter of a loaded node's CPU
//! (docs/benchmarks.md, run AE). Txids and outpoints are hashes, so a block's entries land all
//! over each tree and a commit rewrites most of its pages; eight blocks' entries written
//! together rewrite those pages once instead of eight times, and an output created and spent
//! within that time never reaches the tables.
//!
//! The key space is cut into [`SLICES`] ranges by the first bits of the txid (an outpoint's key
//! starts with its txid, so a transaction's entries and its outputs share a slice). The block at
//! height `h` writes slice `h % SLICES`: every commit writes about as much, each entry waits at
//! most `SLICES` blocks, and no commit stalls the node by writing everything at once. Each
//! slice records the height its part of the tables reflects; on open, the blocks above it are
//! replayed for that slice.

use super::BlockChanges;
use crate::chain::{Hash256, OutPoint, TxOut, Txid};
use foldhash::{HashMap, HashSet};

/// Key ranges written in turn, one per block.
pub(super) const SLICES: usize = 8;
/// Entries held before every slice is written at once, whatever the turn: bounds the memory a
/// burst can take (about 100 bytes an entry).
pub(super) const MAX_HELD: usize = 131_072;

/// The slice of a txid or of an outpoint's txid: its first three bits, so a slice is a
/// contiguous range of keys and a write of one slice touches its own pages only.
pub(super) fn slice_of(txid: &Hash256) -> usize {
    (txid.0[0] >> 5) as usize
}

#[derive(Debug, Clone, Default)]
pub(super) struct Slice {
    /// The height this slice of the tables reflects.
    pub written: u64,
    /// Outputs created above `written` and unspent, with the height of the block that created each.
    pub created: HashMap<OutPoint, (TxOut, u64)>,
    /// Outputs in the tables that blocks above `written` spent.
    pub spent: HashSet<OutPoint>,
    /// Transaction-index entries (height, position) of the blocks above `written`.
    pub txids: HashMap<Txid, (u64, u32)>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Overlay {
    /// The newest block applied here.
    pub tip: u64,
    pub slices: [Slice; SLICES],
}

/// Where an output's state is known.
pub(super) enum Lookup<'a> {
    Created(&'a TxOut),
    Spent,
    /// Not touched above the slice's written height: the tables have the answer.
    Tables,
}

/// What the tables need to bring some slices up to a height, each list in key order.
#[derive(Default)]
pub(super) struct Pending<'a> {
    pub txids: Vec<(Txid, (u64, u32))>,
    pub spent: Vec<OutPoint>,
    pub created: Vec<(OutPoint, &'a TxOut, u64)>,
}

impl Overlay {
    /// An empty overlay at `tip` over tables whose slices reflect `written`.
    pub fn at(tip: u64, written: [u64; SLICES]) -> Overlay {
        let mut overlay = Overlay { tip, ..Overlay::default() };
        for (slice, w) in overlay.slices.iter_mut().zip(written) {
            slice.written = w;
        }
        overlay
    }

    pub fn written(&self) -> [u64; SLICES] {
        std::array::from_fn(|s| self.slices[s].written)
    }

    pub fn lookup(&self, op: &OutPoint) -> Lookup<'_> {
        let slice = &self.slices[slice_of(&op.txid)];
        if let Some((out, _)) = slice.created.get(op) {
            Lookup::Created(out)
        } else if slice.spent.contains(op) {
            Lookup::Spent
        } else {
            Lookup::Tables
        }
    }

    pub fn location(&self, txid: &Txid) -> Option<(u64, u32)> {
        self.slices[slice_of(txid)].txids.get(txid).copied()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.created.len() + s.spent.len() + s.txids.len()).sum()
    }

    /// The slices the commit of the block at `height`, with `next`'s changes, writes: its turn's,
    /// or all of them when too much is held.
    pub fn to_write(&self, height: u64, next: &BlockChanges<'_>) -> [bool; SLICES] {
        let held = self.len() + next.created.len() + next.spent.len() + next.txids.len();
        let turn = (height % SLICES as u64) as usize;
        std::array::from_fn(|s| held >= MAX_HELD || s == turn)
    }

    /// Takes in the changes of the block at `height` for the slices that do not reflect it
    /// already. A live commit's spends were checked by the caller; on replay, by that commit.
    pub fn apply(&mut self, height: u64, changes: &BlockChanges<'_>) {
        let above = |slice: &Slice| slice.written < height;
        for op in &changes.spent {
            let slice = &mut self.slices[slice_of(&op.txid)];
            if above(slice) && slice.created.remove(op).is_none() {
                slice.spent.insert(*op);
            }
        }
        for (op, out) in &changes.created {
            let slice = &mut self.slices[slice_of(&op.txid)];
            if above(slice) {
                slice.created.insert(*op, ((*out).clone(), height));
            }
        }
        for (txid, pos) in &changes.txids {
            let slice = &mut self.slices[slice_of(txid)];
            if above(slice) {
                slice.txids.insert(*txid, (height, *pos));
            }
        }
        self.tip = height;
    }

    /// For the slices in `write`: what they hold followed by `next`'s changes at `height`,
    /// netted, in key order.
    pub fn pending<'a>(&'a self, write: &[bool; SLICES], height: u64, next: &'a BlockChanges<'a>) -> Pending<'a> {
        let mut p = Pending::default();
        let spent_now: HashSet<&OutPoint> = next.spent.iter().filter(|op| write[slice_of(&op.txid)]).collect();
        for (slice, _) in self.slices.iter().zip(write).filter(|(_, w)| **w) {
            p.spent.extend(slice.spent.iter().copied());
            p.created.extend(
                slice.created.iter().filter(|(op, _)| !spent_now.contains(op)).map(|(op, (out, h))| (*op, out, *h)),
            );
            p.txids.extend(slice.txids.iter().map(|(t, at)| (*t, *at)));
        }
        let mine = |txid: &Txid| write[slice_of(txid)];
        p.spent.extend(next.spent.iter().filter(|op| mine(&op.txid) && self.lookup(op).is_tables()));
        p.created.extend(next.created.iter().filter(|(op, _)| mine(&op.txid)).map(|(op, out)| (*op, *out, height)));
        p.txids.extend(next.txids.iter().filter(|(t, _)| mine(t)).map(|(t, pos)| (*t, (height, *pos))));
        p.spent.sort_unstable_by_key(super::keys::outpoint);
        p.created.sort_unstable_by_key(|(op, _, _)| super::keys::outpoint(op));
        p.txids.sort_unstable_by_key(|(t, _)| t.0);
        p
    }

    /// After the commit of the block at `height` that wrote the slices in `written`: those are
    /// emptied, the others take in the block's changes.
    pub fn committed(&mut self, written: &[bool; SLICES], height: u64, changes: &BlockChanges<'_>) {
        for (slice, _) in self.slices.iter_mut().zip(written).filter(|(_, w)| **w) {
            // A new slice rather than cleared maps: a burst's capacity is given back.
            *slice = Slice { written: height, ..Slice::default() };
        }
        self.apply(height, changes);
    }

    /// Every held output, in key order.
    pub fn created_in_order(&self) -> Vec<(OutPoint, TxOut, u64)> {
        let mut all: Vec<_> =
            self.slices.iter().flat_map(|s| s.created.iter().map(|(op, (out, h))| (*op, out.clone(), *h))).collect();
        all.sort_unstable_by_key(|(op, _, _)| super::keys::outpoint(op));
        all
    }

    /// Every held spend of an output in the tables.
    pub fn spent(&self) -> HashSet<OutPoint> {
        self.slices.iter().flat_map(|s| s.spent.iter().copied()).collect()
    }
}

impl Lookup<'_> {
    fn is_tables(&self) -> bool {
        matches!(self, Lookup::Tables)
    }
}
