//! Crash-safe chain storage on redb: blocks, their commit certificates, the UTXO set with an
//! address index, a transaction index, and the transactions Avalanche finalized that no block
//! holds yet.
//!
//! Every change is one redb write transaction committed with `Durability::Immediate`, so after a
//! crash the database is exactly as it was after the last call that returned `Ok`: a block is
//! either fully applied (block, tip, and its index and UTXO entries written or replayable, see
//! below) or not at all.
//!
//! Tables (keys are fixed-width big-endian, see `keys.rs`; values are bincode of chain types):
//!
//! | table               | key                          | value                              |
//! |---------------------|------------------------------|------------------------------------|
//! | `meta`              | name (`&str`)                | format version, genesis, chain id, tip, written heights |
//! | `blocks`            | height (8)                   | `Block`                            |
//! | `block_hashes`      | height (8)                   | block hash (32)                    |
//! | `block_heights`     | block hash (32)              | height (`u64`)                     |
//! | `certs`             | height (8)                   | `CommitCert` that finalized it     |
//! | `tx_index`          | txid (32)                    | (height, position in block)        |
//! | `utxos`             | txid (32) ++ vout (4)        | `TxOut`                            |
//! | `address_index`     | range (1) ++ address (21) ++ outpoint (36) | height that created the output |
//! | `finalized_log`     | sequence (8) ++ txid (32)    | (`Transaction`, finalized at ms)   |
//!
//! `finalized_log` holds what Avalanche finalized and no block holds yet, keyed by the order of
//! the finality writes: each write appends at the end of the tree and dirties a page or two, where
//! keyed by txid each of its transactions landed on a random page (docs/benchmarks.md, run AD).
//! Format 1 keyed the same content by txid (`finalized_pending`); opening such a store migrates it.
//!
//! `tx_index`, `utxos` and `address_index` lag the tip by up to eight blocks: their entries are
//! held in memory first (`overlay.rs`) and every read sees both, so callers see the chain at
//! the tip. Each commit writes, in its block's transaction, one of eight key ranges of the held
//! entries, and `meta` records per range the height the tables reflect (`held_written`); on
//! open, the blocks above it are replayed. Format 2 had no such record (its tables were always
//! at the tip); opening such a store records it, and the format number keeps an older timed
//! from reading tables that lag the tip.
//!
//! The address index's keys begin with the outpoint's key range, so writing one range touches
//! one eighth of the index, as it does of `utxos`; listing an address reads eight key ranges.
//! Format 3 keyed it by address first (`address_utxos`); opening such a store rebuilds it.

mod keys;
mod overlay;
#[cfg(test)]
pub(crate) mod tests;

use crate::api::TxOutSetInfo;
use crate::chain::amount::to_time;
use crate::chain::{
    Address, Block, BlockHash, CommitCert, GenesisConfig, Hash256, OutPoint, Transaction, TxOut, Txid, UtxoView,
};
use keys::{ADDRESS_KEY_LEN, ADDRESS_OUTPOINT_LEN, HASH_LEN, HEIGHT_LEN, LOG_KEY_LEN, OUTPOINT_LEN};
use overlay::{Lookup, Overlay, SLICES};
use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};

/// Layout version of the tables above. Bump it (and add a migration) when the layout changes.
pub const STORE_FORMAT_VERSION: u32 = 4;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<&[u8; HEIGHT_LEN], &[u8]> = TableDefinition::new("blocks");
const BLOCK_HASHES: TableDefinition<&[u8; HEIGHT_LEN], &[u8; HASH_LEN]> = TableDefinition::new("block_hashes");
const BLOCK_HEIGHTS: TableDefinition<&[u8; HASH_LEN], u64> = TableDefinition::new("block_heights");
const CERTS: TableDefinition<&[u8; HEIGHT_LEN], &[u8]> = TableDefinition::new("certs");
const TX_INDEX: TableDefinition<&[u8; HASH_LEN], (u64, u32)> = TableDefinition::new("tx_index");
const UTXOS: TableDefinition<&[u8; OUTPOINT_LEN], &[u8]> = TableDefinition::new("utxos");
const ADDRESS_INDEX: TableDefinition<&[u8; ADDRESS_KEY_LEN], u64> = TableDefinition::new("address_index");
/// Format 3's address index, keyed by address then outpoint; migrated to `address_index`.
const ADDRESS_UTXOS_V3: TableDefinition<&[u8; ADDRESS_OUTPOINT_LEN], u64> = TableDefinition::new("address_utxos");
const FINALIZED_LOG: TableDefinition<&[u8; LOG_KEY_LEN], &[u8]> = TableDefinition::new("finalized_log");
/// Format 1's table for the same content, keyed by txid: migrated on open.
const FINALIZED_PENDING_V1: TableDefinition<&[u8; HASH_LEN], &[u8]> = TableDefinition::new("finalized_pending");

const META_FORMAT_VERSION: &str = "format_version";
const META_GENESIS_HASH: &str = "genesis_hash";
const META_CHAIN_ID: &str = "chain_id";
const META_TIP: &str = "tip";
/// Per key range of `tx_index`, `utxos` and `address_index`, the height the tables reflect
/// (`SLICES` heights, 8 bytes big-endian each).
const META_WRITTEN: &str = "held_written";
/// How often a multi-entry read retries before deciding the tables and the overlay disagree for
/// good: a mismatch lasts from a commit to its overlay update, microseconds.
const CONSISTENT_READ_TRIES: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {} is in use by another process (is another timed running on this data dir?)", path.display())]
    InUse { path: PathBuf },
    #[error("database {} belongs to another chain: its genesis is {stored}, this node's is {expected}", path.display())]
    GenesisMismatch { stored: Hash256, expected: Hash256, path: PathBuf },
    #[error("database {} has format version {found}, newer than the {supported} this build supports; upgrade timed", path.display())]
    NewerFormat { found: u32, supported: u32, path: PathBuf },
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error("block at height {got} does not extend the tip at height {tip}")]
    WrongHeight { tip: u64, got: u64 },
    #[error("block at height {height} has parent {got}, but the tip is {expected}")]
    WrongParent { height: u64, expected: BlockHash, got: BlockHash },
    #[error(
        "certificate for {cert_hash} at height {cert_height} does not match block {block_hash} at height {height}"
    )]
    CertMismatch { height: u64, block_hash: BlockHash, cert_height: u64, cert_hash: BlockHash },
    #[error("block at height {height} spends {outpoint}, which is missing or already spent")]
    MissingInput { height: u64, outpoint: OutPoint },
    #[error("block at height {height} contains transaction {txid}, which is already in the chain")]
    DuplicateTx { height: u64, txid: Txid },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: redb's error is large and would bloat every `Result` of this module.
    #[error("database error: {0}")]
    Db(Box<redb::Error>),
}

// redb has one error type per operation; all of them convert into `redb::Error`.
macro_rules! db_error_from {
    ($($t:ty),*) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        })*
    };
}
db_error_from!(redb::Error, DatabaseError, redb::TransactionError, TableError, redb::StorageError, redb::CommitError);

/// What `gettxoutsetinfo` reports, computed in one read transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UtxoSetInfo {
    pub height: u64,
    pub tip: BlockHash,
    /// Number of unspent outputs.
    pub count: u64,
    /// Sum of their values in base units.
    pub total: u64,
    /// SHA-256d over every unspent output in outpoint order; see [`Store::utxo_set_info`].
    pub hash: Hash256,
}

impl UtxoSetInfo {
    pub fn to_rpc(&self) -> TxOutSetInfo {
        TxOutSetInfo {
            height: self.height,
            bestblock: self.tip.to_hex(),
            txouts: self.count,
            total_amount: to_time(self.total),
            total_units: self.total,
            hash_serialized: self.hash.to_hex(),
        }
    }
}

/// The node's chain database. `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// The next `finalized_log` sequence number (one past the last key at open). Only
    /// [`Store::put_finalized_many`] takes from it; a write that fails leaves a gap, which is
    /// harmless: only the order matters.
    next_log_seq: std::sync::atomic::AtomicU64,
    /// The UTXO changes above the UTXO height. Only [`Store::commit_block`] changes it, after its
    /// transaction commits.
    overlay: RwLock<Overlay>,
    /// Serializes block commits: each one checks its spends against the overlay it then updates.
    writer: Mutex<()>,
    /// Write every held entry with every block (tests compare against it).
    write_all: bool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory serialization cannot fail")
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(format!("undecodable {what}: {e}")))
}

fn read_tip<T: ReadableTable<&'static str, &'static [u8]>>(meta: &T) -> Result<(u64, BlockHash), StoreError> {
    let raw = meta.get(META_TIP)?.ok_or_else(|| StoreError::Corrupt("no tip recorded".into()))?;
    keys::tip_from(raw.value()).ok_or_else(|| StoreError::Corrupt("tip record has the wrong length".into()))
}

fn read_written<T: ReadableTable<&'static str, &'static [u8]>>(meta: &T) -> Result<[u64; SLICES], StoreError> {
    let raw = meta.get(META_WRITTEN)?.ok_or_else(|| StoreError::Corrupt("no written heights recorded".into()))?;
    let raw = raw.value();
    if raw.len() != SLICES * HEIGHT_LEN {
        return Err(StoreError::Corrupt("written heights have the wrong length".into()));
    }
    Ok(std::array::from_fn(|s| keys::height_from(raw[s * HEIGHT_LEN..][..HEIGHT_LEN].try_into().expect("8 bytes"))))
}

fn encode_written(written: &[u64; SLICES]) -> Vec<u8> {
    written.iter().flat_map(|h| keys::height(*h)).collect()
}

impl Store {
    /// Creates the database with the genesis block committed, or opens an existing one after checking
    /// its format version and genesis hash against `genesis`. A store of another genesis or a newer
    /// format is refused.
    pub fn open(path: &Path, genesis: &GenesisConfig) -> Result<Store, StoreError> {
        // 4 MiB rather than 16: the same throughput under load, and a node's memory comes back
        // within 2x of idle after it (docs/benchmarks.md, run U).
        const CACHE_BYTES: usize = 4 * 1024 * 1024;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io { path: parent.to_path_buf(), source })?;
        }
        // redb holds an exclusive file lock for as long as the database is open.
        // redb's default cache may grow to 1 GiB and is never given back: after a burst a node
        // kept every page it touched. The OS page cache still holds the file for reads.
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_path_buf() },
            other => other.into(),
        })?;
        let mut store = Store {
            db,
            path: path.to_path_buf(),
            next_log_seq: 0.into(),
            overlay: RwLock::default(),
            writer: Mutex::new(()),
            write_all: false,
        };
        // Initialization is one transaction, so a meta table exists iff the store is complete.
        let initialized = match store.db.begin_read()?.open_table(META) {
            Ok(_) => true,
            Err(TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if initialized {
            store.check_identity(genesis)?;
        } else {
            store.initialize(genesis)?;
        }
        let last = store.begin_read()?.open_table(FINALIZED_LOG)?.last()?.map(|(k, _)| keys::log_seq(k.value()));
        *store.next_log_seq.get_mut() = last.map_or(0, |s| s + 1);
        *store.overlay.get_mut().unwrap_or_else(PoisonError::into_inner) = store.replay()?;
        Ok(store)
    }

    /// Writes every held entry with every block, as a store without the overlay would: tests
    /// compare the two.
    #[cfg(test)]
    pub(crate) fn write_every_block(&mut self) {
        self.write_all = true;
    }

    /// The entries of the blocks above each slice's written height, rebuilt from the stored
    /// blocks. Their spends were checked when they were committed.
    fn replay(&self) -> Result<Overlay, StoreError> {
        let rtx = self.begin_read()?;
        let meta = rtx.open_table(META)?;
        let (tip, _) = read_tip(&meta)?;
        let written = read_written(&meta)?;
        let base = written.iter().copied().min().unwrap_or(tip);
        if let Some(above) = written.iter().find(|w| **w > tip) {
            return Err(StoreError::Corrupt(format!("written height {above} is above the tip {tip}")));
        }
        let blocks = rtx.open_table(BLOCKS)?;
        let mut overlay = Overlay::at(base, written);
        for h in base + 1..=tip {
            let raw =
                blocks.get(&keys::height(h))?.ok_or_else(|| StoreError::Corrupt(format!("block {h} is missing")))?;
            let block: Block = decode("block", raw.value())?;
            overlay.apply(h, &BlockChanges::plan(&block)?);
        }
        overlay.tip = tip;
        if tip > base {
            tracing::info!(
                from = base + 1,
                to = tip,
                "replayed the index and UTXO entries of the blocks not yet written"
            );
        }
        Ok(overlay)
    }

    fn overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read transaction and what `pick` takes from the overlay, at the same state of the chain:
    /// the tables' written heights and the tip both match the overlay's. They differ only between
    /// a commit and its overlay update, so this retries until that is over.
    fn consistent_read<T>(&self, pick: impl Fn(&Overlay) -> T) -> Result<(ReadTransaction, T), StoreError> {
        for _ in 0..CONSISTENT_READ_TRIES {
            let overlay = self.overlay();
            let rtx = self.begin_read()?;
            let meta = rtx.open_table(META)?;
            if read_written(&meta)? == overlay.written() && read_tip(&meta)?.0 == overlay.tip {
                let picked = pick(&overlay);
                drop(meta);
                return Ok((rtx, picked));
            }
            drop(overlay);
            std::thread::yield_now();
        }
        Err(StoreError::Corrupt("the tables and the entries held in memory disagree".into()))
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        // Already redb's default; set explicitly because callers rely on "durable on return".
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    fn initialize(&self, genesis: &GenesisConfig) -> Result<(), StoreError> {
        let block = genesis.genesis_block();
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_FORMAT_VERSION, STORE_FORMAT_VERSION.to_be_bytes().as_slice())?;
            meta.insert(META_GENESIS_HASH, block.hash().0.as_slice())?;
            meta.insert(META_CHAIN_ID, genesis.chain_id.as_bytes())?;
        }
        // Create every table now so read transactions never meet a missing one.
        txn.open_table(BLOCKS)?;
        txn.open_table(BLOCK_HASHES)?;
        txn.open_table(BLOCK_HEIGHTS)?;
        txn.open_table(CERTS)?;
        txn.open_table(TX_INDEX)?;
        txn.open_table(UTXOS)?;
        txn.open_table(ADDRESS_INDEX)?;
        txn.open_table(FINALIZED_LOG)?;
        let changes = BlockChanges::plan(&block)?;
        write_block(&txn, &block, None, &changes)?;
        let all = [true; SLICES];
        write_held(&txn, 0, &all, &[0; SLICES], &Overlay::default().pending(&all, 0, &changes))?;
        txn.commit()?;
        tracing::info!(path = %self.path.display(), genesis = %block.hash(), "created chain database");
        Ok(())
    }

    fn check_identity(&self, genesis: &GenesisConfig) -> Result<(), StoreError> {
        let rtx = self.begin_read()?;
        let meta = rtx.open_table(META)?;
        let version =
            meta.get(META_FORMAT_VERSION)?.ok_or_else(|| StoreError::Corrupt("no format version recorded".into()))?;
        let version: [u8; 4] = version
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("format version has the wrong length".into()))?;
        let found = u32::from_be_bytes(version);
        if found > STORE_FORMAT_VERSION {
            return Err(StoreError::NewerFormat { found, supported: STORE_FORMAT_VERSION, path: self.path.clone() });
        }
        if found == 0 {
            // Version 1 is the first layout; anything lower was never written by timed.
            return Err(StoreError::Corrupt(format!("unknown format version {found}")));
        }
        let stored =
            meta.get(META_GENESIS_HASH)?.ok_or_else(|| StoreError::Corrupt("no genesis hash recorded".into()))?;
        let stored = Hash256(
            stored.value().try_into().map_err(|_| StoreError::Corrupt("genesis hash has the wrong length".into()))?,
        );
        let expected = genesis.genesis_hash();
        if stored != expected {
            return Err(StoreError::GenesisMismatch { stored, expected, path: self.path.clone() });
        }
        read_tip(&meta)?;
        drop(meta);
        drop(rtx);
        if found < 2 {
            self.migrate_from_1()?;
        }
        if found < 3 {
            self.migrate_from_2()?;
        }
        if found < 4 {
            self.migrate_from_3()?;
        }
        Ok(())
    }

    /// Format 3 → 4: the address index is rebuilt with each key led by its outpoint's key range,
    /// in one transaction. The entries are the same, so the written heights still hold.
    fn migrate_from_3(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let old = txn.open_table(ADDRESS_UTXOS_V3)?;
            let mut entries = Vec::new();
            for entry in old.iter()? {
                let (k, height) = entry?;
                entries.push((keys::address_outpoint_from_v3(k.value()), height.value()));
            }
            drop(old);
            entries.sort_unstable_by_key(|(k, _)| *k);
            let mut index = txn.open_table(ADDRESS_INDEX)?;
            for (k, height) in &entries {
                index.insert(k, *height)?;
            }
        }
        txn.delete_table(ADDRESS_UTXOS_V3)?;
        txn.open_table(META)?.insert(META_FORMAT_VERSION, 4u32.to_be_bytes().as_slice())?;
        txn.commit()?;
        tracing::info!(path = %self.path.display(), "chain database migrated from format 3 to 4");
        Ok(())
    }

    /// Format 2 → 3: format 2 wrote the UTXO tables with every block, so they are at the tip.
    fn migrate_from_2(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let (tip, _) = read_tip(&meta)?;
            meta.insert(META_WRITTEN, encode_written(&[tip; SLICES]).as_slice())?;
            meta.insert(META_FORMAT_VERSION, 3u32.to_be_bytes().as_slice())?;
        }
        txn.commit()?;
        tracing::info!(path = %self.path.display(), "chain database migrated from format 2 to 3");
        Ok(())
    }

    /// Format 1 → 2: the finalized transactions no block holds move from `finalized_pending`
    /// (by txid) to `finalized_log` (in the order they were finalized), in one transaction.
    fn migrate_from_1(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let old = txn.open_table(FINALIZED_PENDING_V1)?;
            let mut entries: Vec<(u64, Txid, Vec<u8>)> = Vec::new();
            for entry in old.iter()? {
                let (k, v) = entry?;
                let (_, ms): (Transaction, u64) = decode("finalized transaction", v.value())?;
                entries.push((ms, Hash256(*k.value()), v.value().to_vec()));
            }
            drop(old);
            entries.sort_by_key(|(ms, txid, _)| (*ms, txid.0));
            let mut log = txn.open_table(FINALIZED_LOG)?;
            for (seq, (_, txid, value)) in entries.iter().enumerate() {
                log.insert(&keys::log(seq as u64, txid), value.as_slice())?;
            }
        }
        txn.delete_table(FINALIZED_PENDING_V1)?;
        txn.open_table(META)?.insert(META_FORMAT_VERSION, 2u32.to_be_bytes().as_slice())?;
        txn.commit()?;
        tracing::info!(path = %self.path.display(), "chain database migrated from format 1 to 2");
        Ok(())
    }

    pub fn tip(&self) -> Result<(u64, BlockHash), StoreError> {
        read_tip(&self.begin_read()?.open_table(META)?)
    }

    pub fn block_by_height(&self, h: u64) -> Result<Option<Block>, StoreError> {
        let table = self.begin_read()?.open_table(BLOCKS)?;
        let raw = table.get(&keys::height(h))?;
        raw.map(|v| decode("block", v.value())).transpose()
    }

    pub fn block_hash_at(&self, h: u64) -> Result<Option<BlockHash>, StoreError> {
        let table = self.begin_read()?.open_table(BLOCK_HASHES)?;
        let hash = table.get(&keys::height(h))?.map(|v| Hash256(*v.value()));
        Ok(hash)
    }

    pub fn block_by_hash(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let rtx = self.begin_read()?;
        let Some(h) = rtx.open_table(BLOCK_HEIGHTS)?.get(&hash.0)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let raw = rtx.open_table(BLOCKS)?.get(&keys::height(h))?;
        match raw {
            Some(v) => Ok(Some(decode("block", v.value())?)),
            None => Err(StoreError::Corrupt(format!("block {hash} indexed at height {h} but not stored"))),
        }
    }

    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<u64>, StoreError> {
        Ok(self.begin_read()?.open_table(BLOCK_HEIGHTS)?.get(&hash.0)?.map(|v| v.value()))
    }

    /// The certificate that finalized block `h` (none for genesis).
    pub fn cert_at(&self, h: u64) -> Result<Option<CommitCert>, StoreError> {
        let table = self.begin_read()?.open_table(CERTS)?;
        let raw = table.get(&keys::height(h))?;
        raw.map(|v| decode("certificate", v.value())).transpose()
    }

    /// Blocks `from..=to` with their certificates, for sync replies. Stops at the tip; genesis has
    /// no certificate and is never returned (every node computes it). The caller bounds the span.
    pub fn blocks_range(&self, from: u64, to: u64) -> Result<Vec<(Block, CommitCert)>, StoreError> {
        let from = from.max(1);
        if from > to {
            return Ok(Vec::new());
        }
        let rtx = self.begin_read()?;
        let blocks = rtx.open_table(BLOCKS)?;
        let certs = rtx.open_table(CERTS)?;
        let (lo, hi) = (keys::height(from), keys::height(to));
        let mut out = Vec::new();
        for entry in blocks.range::<&[u8; HEIGHT_LEN]>(&lo..=&hi)? {
            let (k, v) = entry?;
            let h = keys::height_from(k.value());
            let block: Block = decode("block", v.value())?;
            let cert = certs
                .get(k.value())?
                .ok_or_else(|| StoreError::Corrupt(format!("block at height {h} has no certificate")))?;
            out.push((block, decode("certificate", cert.value())?));
        }
        Ok(out)
    }

    /// Applies a block at tip+1 in ONE write transaction: block bytes, hash→height index, cert,
    /// tip, and removal of these txids from the finalized log. Its transaction-index entries and
    /// UTXO changes join the overlay, and the transaction writes the held entries of one key
    /// range (of all of them when too much is held). Fails (and changes nothing) if the height is
    /// not tip+1, the parent hash is wrong, the certificate is for another block, a transaction
    /// is already in the chain, or an input is missing. Durable on return.
    ///
    /// Only storage consistency is checked here; signatures, amounts and the certificate's votes
    /// are the caller's to verify before committing.
    pub fn commit_block(&self, block: &Block, cert: &CommitCert) -> Result<(), StoreError> {
        let height = block.height();
        let hash = block.hash();
        if cert.height != height || cert.block_hash != hash {
            return Err(StoreError::CertMismatch {
                height,
                block_hash: hash,
                cert_height: cert.height,
                cert_hash: cert.block_hash,
            });
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self.begin_write()?;
        let (tip_height, tip_hash) = read_tip(&txn.open_table(META)?)?;
        if tip_height.checked_add(1) != Some(height) {
            return Err(StoreError::WrongHeight { tip: tip_height, got: height });
        }
        if block.header.prev_hash != tip_hash {
            return Err(StoreError::WrongParent { height, expected: tip_hash, got: block.header.prev_hash });
        }
        let changes = BlockChanges::plan(block)?;
        let wrote = {
            // Only this method changes the overlay, and `_writer` keeps other commits out.
            let overlay = self.overlay();
            if overlay.tip != tip_height {
                return Err(StoreError::Corrupt(format!(
                    "the entries held in memory end at height {}, the tip is {tip_height}",
                    overlay.tip
                )));
            }
            // On any error below, dropping `txn` uncommitted rolls every write back. Repeats go
            // first: a transaction already in the chain is reported as such, not as the spend
            // of its own (spent) inputs.
            {
                let index = txn.open_table(TX_INDEX)?;
                for (txid, _) in &changes.txids {
                    if overlay.location(txid).is_some() || index.get(&txid.0)?.is_some() {
                        return Err(StoreError::DuplicateTx { height, txid: *txid });
                    }
                }
            }
            write_block(&txn, block, Some(cert), &changes)?;
            {
                let utxos = txn.open_table(UTXOS)?;
                for op in &changes.spent {
                    let unspent = match overlay.lookup(op) {
                        Lookup::Created(_) => true,
                        Lookup::Spent => false,
                        Lookup::Tables => utxos.get(&keys::outpoint(op))?.is_some(),
                    };
                    if !unspent {
                        return Err(StoreError::MissingInput { height, outpoint: *op });
                    }
                }
            }
            let write = if self.write_all { [true; SLICES] } else { overlay.to_write(height, &changes) };
            let pending = overlay.pending(&write, height, &changes);
            write_held(&txn, height, &write, &overlay.written(), &pending)?;
            write
        };
        txn.commit()?;
        let mut overlay = self.overlay.write().unwrap_or_else(PoisonError::into_inner);
        overlay.committed(&wrote, height, &changes);
        Ok(())
    }

    /// The unspent output at `op`, at the tip or at a tip committed while this reads: a point
    /// read needs no snapshot of the overlay and the tables together.
    pub fn get_utxo(&self, op: &OutPoint) -> Result<Option<TxOut>, StoreError> {
        match self.overlay().lookup(op) {
            Lookup::Created(out) => return Ok(Some(out.clone())),
            Lookup::Spent => return Ok(None),
            Lookup::Tables => {}
        }
        let table = self.begin_read()?.open_table(UTXOS)?;
        let raw = table.get(&keys::outpoint(op))?;
        raw.map(|v| decode("output", v.value())).transpose()
    }

    /// Unspent outputs paying to `addr`, in outpoint order, with the height that created each.
    pub fn utxos_for_address(&self, addr: &Address) -> Result<Vec<(OutPoint, TxOut, u64)>, StoreError> {
        let (rtx, (spent, mut out)) = self.consistent_read(|o| (o.spent(), held_for(o, addr)))?;
        let utxos = rtx.open_table(UTXOS)?;
        for (op, height) in indexed_for(&rtx, addr)? {
            if !spent.contains(&op) {
                out.push((op, indexed_utxo(&utxos, &op)?, height));
            }
        }
        out.sort_unstable_by_key(|(op, _, _)| keys::outpoint(op));
        Ok(out)
    }

    /// Unspent outputs paying to `addr`, oldest first (by creating height, then outpoint), handed
    /// to `visit` until it returns true. Only the address index is read in full; an output's
    /// value is read when it is visited, so a wallet with tens of thousands of reward outputs
    /// pays for the few a payment needs (`sendtoaddress`), not for all of them.
    pub fn utxos_for_address_oldest(
        &self,
        addr: &Address,
        mut visit: impl FnMut(&OutPoint, TxOut) -> bool,
    ) -> Result<(), StoreError> {
        let (rtx, (spent, held)) = self.consistent_read(|o| (o.spent(), held_for(o, addr)))?;
        // The held outputs come with their value; the tables' are read when visited.
        let mut ops: Vec<(u64, OutPoint, Option<TxOut>)> =
            held.into_iter().map(|(op, out, height)| (height, op, Some(out))).collect();
        for (op, height) in indexed_for(&rtx, addr)? {
            if !spent.contains(&op) {
                ops.push((height, op, None));
            }
        }
        ops.sort_unstable_by_key(|(height, op, _)| (*height, keys::outpoint(op)));
        let utxos = rtx.open_table(UTXOS)?;
        for (_, op, held) in ops {
            let out = match held {
                Some(out) => out,
                None => indexed_utxo(&utxos, &op)?,
            };
            if visit(&op, out) {
                break;
            }
        }
        Ok(())
    }

    /// Height of the block holding `txid` and the transaction's position in it.
    pub fn tx_location(&self, txid: &Txid) -> Result<Option<(u64, u32)>, StoreError> {
        Ok(self.index_entry(txid)?.1)
    }

    /// The transaction index's entry for `txid` (its block's height and its position there),
    /// with a read transaction that holds that block. The overlay is read first: a block it
    /// holds was committed before, so the read transaction begun after it sees the block.
    fn index_entry(&self, txid: &Txid) -> Result<(ReadTransaction, Option<(u64, u32)>), StoreError> {
        let held = self.overlay().location(txid);
        let rtx = self.begin_read()?;
        let entry = match held {
            Some(entry) => Some(entry),
            None => rtx.open_table(TX_INDEX)?.get(&txid.0)?.map(|v| v.value()),
        };
        Ok((rtx, entry))
    }

    /// Which of `txids` are in the chain, in one read transaction: a poll answer asks about
    /// many at once, and a read transaction per txid cost more than the lookups themselves.
    pub fn in_chain(&self, txids: &[Txid]) -> Result<Vec<bool>, StoreError> {
        if txids.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<bool> = {
            let overlay = self.overlay();
            txids.iter().map(|t| overlay.location(t).is_some()).collect()
        };
        if held.iter().all(|h| *h) {
            return Ok(held);
        }
        let index = self.begin_read()?.open_table(TX_INDEX)?;
        txids.iter().zip(held).map(|(t, held)| Ok(held || index.get(&t.0)?.is_some())).collect()
    }

    /// Where a transaction sits in the chain: its block's height and hash, read in one read
    /// transaction without decoding the block.
    pub fn tx_block(&self, txid: &Txid) -> Result<Option<(u64, BlockHash)>, StoreError> {
        let (rtx, entry) = self.index_entry(txid)?;
        let Some((height, _)) = entry else {
            return Ok(None);
        };
        let hash = rtx
            .open_table(BLOCK_HASHES)?
            .get(&keys::height(height))?
            .map(|v| Hash256(*v.value()))
            .ok_or_else(|| indexed_at_missing_height(txid, height))?;
        Ok(Some((height, hash)))
    }

    /// A transaction in the chain with the height of its block.
    pub fn get_tx(&self, txid: &Txid) -> Result<Option<(Transaction, u64)>, StoreError> {
        Ok(self.get_tx_in_block(txid)?.map(|(tx, block)| (tx, block.height())))
    }

    /// A transaction in the chain with its whole block, decoded once.
    pub fn get_tx_in_block(&self, txid: &Txid) -> Result<Option<(Transaction, Block)>, StoreError> {
        let (rtx, entry) = self.index_entry(txid)?;
        let Some((height, pos)) = entry else {
            return Ok(None);
        };
        let raw = rtx
            .open_table(BLOCKS)?
            .get(&keys::height(height))?
            .ok_or_else(|| indexed_at_missing_height(txid, height))?;
        let block: Block = decode("block", raw.value())?;
        let tx = block
            .txs
            .get(pos as usize)
            .filter(|tx| tx.txid() == *txid)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("tx {txid} not at position {pos} of block {height}")))?;
        Ok(Some((tx, block)))
    }

    /// Count, total value and a SHA-256d over all (outpoint, output) pairs in key order, so two
    /// nodes at the same tip can compare UTXO sets, with the tip it was computed at (one read
    /// transaction). Each pair is hashed as txid (32) ++ vout (4, BE) ++ value (8, BE) ++ address
    /// (21): fixed width, so the hash does not depend on any serializer's framing.
    pub fn utxo_set_info(&self) -> Result<UtxoSetInfo, StoreError> {
        // A copy of the overlay, so a walk over a large set does not hold up commits.
        let (rtx, (spent, held)) = self.consistent_read(|o| (o.spent(), o.created_in_order()))?;
        let (height, tip) = read_tip(&rtx.open_table(META)?)?;
        let utxos = rtx.open_table(UTXOS)?;
        let mut hasher = Sha256::new();
        let mut count: u64 = 0;
        let mut total: u64 = 0;
        let mut add = |key: &[u8; OUTPOINT_LEN], out: &TxOut| -> Result<(), StoreError> {
            hasher.update(key);
            hasher.update(out.value.to_be_bytes());
            hasher.update(keys::address(&out.address));
            count += 1;
            total = total
                .checked_add(out.value)
                .ok_or_else(|| StoreError::Corrupt("unspent outputs add up past u64".into()))?;
            Ok(())
        };
        // The tables and the held outputs, merged in key order (an outpoint is in one or the other).
        let mut held = held.into_iter().map(|(op, out, _)| (keys::outpoint(&op), out)).peekable();
        for entry in utxos.iter()? {
            let (k, v) = entry?;
            while let Some((key, out)) = held.next_if(|(key, _)| key < k.value()) {
                add(&key, &out)?;
            }
            if !spent.contains(&keys::outpoint_from(k.value())) {
                add(k.value(), &decode("output", v.value())?)?;
            }
        }
        for (key, out) in held {
            add(&key, &out)?;
        }
        let hash = Hash256(Sha256::digest(hasher.finalize()).into());
        Ok(UtxoSetInfo { height, tip, count, total, hash })
    }

    /// Persists a transaction that Avalanche finalized but no block holds yet. Durable before
    /// return: the node reports finality only after this returns. A transaction already in a block
    /// is left out, as nothing would ever remove it from the pending table.
    pub fn put_finalized(&self, tx: &Transaction, finalized_ms: u64) -> Result<(), StoreError> {
        self.put_finalized_many(std::slice::from_ref(tx), finalized_ms)
    }

    /// [`Store::put_finalized`] for several transactions in one durable write: a poll that
    /// finalizes many transactions pays for one fsync, not one each.
    pub fn put_finalized_many(&self, txs: &[Transaction], finalized_ms: u64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        // Not while a block commits: between its commit and its overlay update, a transaction
        // it holds would be in neither the overlay nor the index, and would stay in the log.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let overlay = self.overlay();
        let txn = self.begin_write()?;
        {
            let index = txn.open_table(TX_INDEX)?;
            let mut log = txn.open_table(FINALIZED_LOG)?;
            for tx in txs {
                let txid = tx.txid();
                if overlay.location(&txid).is_none() && index.get(&txid.0)?.is_none() {
                    let seq = self.next_log_seq.fetch_add(1, Ordering::Relaxed);
                    log.insert(&keys::log(seq, &txid), encode(&(tx, finalized_ms)).as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Finalized transactions no block holds yet, with when each was finalized, oldest first and
    /// in the order they were written within a millisecond (a child is finalized after its
    /// parent, so replaying in this order respects dependencies).
    pub fn finalized_pending(&self) -> Result<Vec<(Transaction, u64)>, StoreError> {
        let table = self.begin_read()?.open_table(FINALIZED_LOG)?;
        let mut out: Vec<(Transaction, u64)> = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("finalized transaction", v.value())?);
        }
        // Stable: the log's own order breaks ties.
        out.sort_by_key(|(_, ms)| *ms);
        Ok(out)
    }

    /// Whether `txid` waits in the finalized log (a scan: the log holds a block or two).
    pub fn is_finalized_pending(&self, txid: &Txid) -> Result<bool, StoreError> {
        for entry in self.begin_read()?.open_table(FINALIZED_LOG)?.iter()? {
            if keys::log_txid(entry?.0.value()) == *txid {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Size of the database file in bytes (0 if it cannot be read).
    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn indexed_at_missing_height(txid: &Txid, height: u64) -> StoreError {
    StoreError::Corrupt(format!("tx {txid} indexed at missing height {height}"))
}

/// The unspent output the address index points at; its absence means the two tables disagree.
fn indexed_utxo(utxos: &redb::ReadOnlyTable<&[u8; OUTPOINT_LEN], &[u8]>, op: &OutPoint) -> Result<TxOut, StoreError> {
    let raw = utxos
        .get(&keys::outpoint(op))?
        .ok_or_else(|| StoreError::Corrupt(format!("address index lists {op}, which is not unspent")))?;
    decode("output", raw.value())
}

/// Writes a block's own records inside `txn`: the block, its hash index and certificate, the
/// finalized log and the tip. Its transaction index entries and UTXO changes are the caller's
/// (the overlay, then [`write_held`]). The caller has checked that it extends the tip.
fn write_block(
    txn: &WriteTransaction,
    block: &Block,
    cert: Option<&CommitCert>,
    plan: &BlockChanges<'_>,
) -> Result<(), StoreError> {
    let height = block.height();
    let hash = block.hash();
    let hkey = keys::height(height);
    txn.open_table(BLOCKS)?.insert(&hkey, block.to_bytes().as_slice())?;
    txn.open_table(BLOCK_HASHES)?.insert(&hkey, &hash.0)?;
    txn.open_table(BLOCK_HEIGHTS)?.insert(&hash.0, height)?;
    if let Some(cert) = cert {
        txn.open_table(CERTS)?.insert(&hkey, encode(cert).as_slice())?;
    }

    // The log holds what was finalized and is not in a block yet: a block or two, mostly the
    // oldest entries. One pass finds this block's, instead of a look-up by txid per transaction.
    let mut log = txn.open_table(FINALIZED_LOG)?;
    let in_block: std::collections::HashSet<Txid> = plan.txids.iter().map(|(t, _)| *t).collect();
    let mut done: Vec<[u8; LOG_KEY_LEN]> = Vec::new();
    for entry in log.iter()? {
        let (k, _) = entry?;
        if in_block.contains(&keys::log_txid(k.value())) {
            done.push(*k.value());
        }
    }
    for key in &done {
        log.remove(key)?;
    }
    drop(log);
    txn.open_table(META)?.insert(META_TIP, keys::tip(height, &hash).as_slice())?;
    Ok(())
}

/// Brings the `slices` of the transaction index and the UTXO and address tables from `written`
/// up to `height` with `changes` (their entries of the blocks above, outputs spent from the
/// tables, outputs created above), each in key order: txids and outpoints are hashes, so
/// neighbouring keys share their pages only when applied in order.
fn write_held(
    txn: &WriteTransaction,
    height: u64,
    slices: &[bool; SLICES],
    written: &[u64; SLICES],
    changes: &overlay::Pending<'_>,
) -> Result<(), StoreError> {
    let mut tx_index = txn.open_table(TX_INDEX)?;
    for (txid, at) in &changes.txids {
        // A txid already in the chain would overwrite the index entry and live outputs of the first.
        if tx_index.insert(&txid.0, *at)?.is_some() {
            return Err(StoreError::DuplicateTx { height, txid: *txid });
        }
    }
    drop(tx_index);
    let mut utxos = txn.open_table(UTXOS)?;
    let mut unindex = Vec::with_capacity(changes.spent.len());
    for op in &changes.spent {
        let spent: TxOut = match utxos.remove(&keys::outpoint(op))? {
            Some(v) => decode("output", v.value())?,
            None => return Err(StoreError::MissingInput { height, outpoint: *op }),
        };
        unindex.push(keys::address_outpoint(&spent.address, op));
    }
    for (op, out, _) in &changes.created {
        if utxos.insert(&keys::outpoint(op), encode(*out).as_slice())?.is_some() {
            return Err(StoreError::DuplicateTx { height, txid: op.txid });
        }
    }
    drop(utxos);

    let mut by_address = txn.open_table(ADDRESS_INDEX)?;
    unindex.sort_unstable();
    for key in &unindex {
        by_address.remove(key)?;
    }
    let mut index: Vec<_> =
        changes.created.iter().map(|(op, out, h)| (keys::address_outpoint(&out.address, op), *h)).collect();
    index.sort_unstable_by_key(|(key, _)| *key);
    for (key, h) in &index {
        by_address.insert(key, *h)?;
    }
    drop(by_address);
    let now: [u64; SLICES] = std::array::from_fn(|s| if slices[s] { height } else { written[s] });
    txn.open_table(META)?.insert(META_WRITTEN, encode_written(&now).as_slice())?;
    Ok(())
}

/// The address index's outputs of `addr` (spent ones too until their range is written), with
/// the height that created each: one key range after another.
fn indexed_for(rtx: &ReadTransaction, addr: &Address) -> Result<Vec<(OutPoint, u64)>, StoreError> {
    let index = rtx.open_table(ADDRESS_INDEX)?;
    let mut out = Vec::new();
    for slice in 0..SLICES {
        let (lo, hi) = keys::address_bounds(addr, slice);
        for entry in index.range::<&[u8; ADDRESS_KEY_LEN]>(&lo..=&hi)? {
            let (k, height) = entry?;
            out.push((keys::address_key_outpoint(k.value()), height.value()));
        }
    }
    Ok(out)
}

/// The held outputs paying to `addr`.
fn held_for(overlay: &Overlay, addr: &Address) -> Vec<(OutPoint, TxOut, u64)> {
    overlay
        .slices
        .iter()
        .flat_map(|s| s.created.iter())
        .filter(|(_, (out, _))| out.address == *addr)
        .map(|(op, (out, h))| (*op, out.clone(), *h))
        .collect()
}

/// What a block changes, each list in key order.
struct BlockChanges<'a> {
    /// Every transaction with its position in the block.
    txids: Vec<(Txid, u32)>,
    /// Outputs of earlier blocks that this block spends.
    spent: Vec<OutPoint>,
    /// Outputs this block creates and leaves unspent.
    created: Vec<(OutPoint, &'a TxOut)>,
}

impl<'a> BlockChanges<'a> {
    /// Walks the block in order. Inputs come before outputs, so a transaction may spend an
    /// earlier one of the same block but never its own outputs, and a second spend of an output
    /// finds it gone (reported as a missing input, as the store would).
    fn plan(block: &'a Block) -> Result<BlockChanges<'a>, StoreError> {
        let height = block.height();
        let mut txids = Vec::with_capacity(block.txs.len());
        let mut seen = std::collections::HashSet::with_capacity(block.txs.len());
        let mut spent = std::collections::HashSet::new();
        let mut created = std::collections::HashMap::new();
        for (pos, tx) in block.txs.iter().enumerate() {
            let txid = tx.txid();
            // A repeated txid would overwrite the outputs and index entry of the first copy.
            if !seen.insert(txid) {
                return Err(StoreError::DuplicateTx { height, txid });
            }
            txids.push((txid, pos as u32));
            for input in &tx.inputs {
                let op = input.prevout;
                if created.remove(&op).is_none() && !spent.insert(op) {
                    return Err(StoreError::MissingInput { height, outpoint: op });
                }
            }
            for (vout, out) in tx.outputs.iter().enumerate() {
                created.insert(OutPoint { txid, vout: vout as u32 }, out);
            }
        }
        txids.sort_unstable_by_key(|(t, _)| t.0);
        let mut spent: Vec<OutPoint> = spent.into_iter().collect();
        spent.sort_unstable_by_key(keys::outpoint);
        let mut created: Vec<(OutPoint, &TxOut)> = created.into_iter().collect();
        created.sort_unstable_by_key(|(op, _)| keys::outpoint(op));
        Ok(BlockChanges { txids, spent, created })
    }
}

impl UtxoView for Store {
    fn get_utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        match Store::get_utxo(self, outpoint) {
            Ok(out) => out,
            Err(e) => {
                // Validation can only say "missing"; make the real cause visible to the operator.
                tracing::error!(%outpoint, error = %e, "UTXO lookup failed; treating the output as missing");
                None
            }
        }
    }
}
