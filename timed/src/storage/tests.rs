use super::*;
use crate::chain::amount::COIN;
use crate::chain::block::{last_commit_hash, merkle_root, vote_payload, BLOCK_VERSION, VOTE_PRECOMMIT};
use crate::chain::genesis::{devnet_validator_key, devnet_wallet_key, BLOCK_REWARD};
use crate::chain::tx::TX_VERSION;
use crate::chain::{BlockHeader, Domain, Keypair, Network, Signature};
use tempfile::TempDir;

fn devnet() -> GenesisConfig {
    GenesisConfig::devnet(3, 10)
}

fn addr(label: &str) -> Address {
    Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label(label).public())
}

fn wallet(id: &str) -> Address {
    Address::from_pubkey(Network::Testnet, &devnet_wallet_key(id).public())
}

/// Genesis output `vout`; devnet(3) gives validator1 vouts 0..20, validator2 20..40, validator3 40..60.
pub(crate) fn genesis_op(g: &GenesisConfig, vout: u32) -> OutPoint {
    OutPoint { txid: g.genesis_block().txs[0].txid(), vout }
}

/// A transaction spending `ins` (all owned by validator `owner`'s wallet), signed for real.
pub(crate) fn spend(g: &GenesisConfig, owner: &str, ins: Vec<OutPoint>, outs: Vec<(Address, u64)>) -> Transaction {
    let outputs = outs.into_iter().map(|(address, value)| TxOut { value, address }).collect();
    let mut tx = Transaction::unsigned(ins, outputs, 0, None);
    tx.sign_all(&devnet_wallet_key(owner), &g.chain_id);
    tx
}

pub(crate) fn certify(g: &GenesisConfig, block: &Block) -> CommitCert {
    let hash = block.hash();
    let payload = vote_payload(VOTE_PRECOMMIT, block.height(), block.header.round, Some(&hash));
    let votes = g
        .validators
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u16, devnet_validator_key(&v.id).sign(Domain::Vote, &g.chain_id, &payload)))
        .collect();
    CommitCert { height: block.height(), round: block.header.round, block_hash: hash, votes }
}

/// The next block on `store`'s tip: a coinbase to "miner" followed by `txs`, signed by validator1.
fn next_block(store: &Store, g: &GenesisConfig, txs: Vec<Transaction>) -> (Block, CommitCert) {
    let (tip_height, tip_hash) = store.tip().unwrap();
    let height = tip_height + 1;
    let coinbase = Transaction {
        version: TX_VERSION,
        inputs: vec![],
        outputs: vec![TxOut { value: BLOCK_REWARD, address: addr("miner") }],
        lock_time: height,
        memo: None,
    };
    let mut all = vec![coinbase];
    all.extend(txs);
    let last_commit = store.cert_at(tip_height).unwrap();
    let txids: Vec<Txid> = all.iter().map(|t| t.txid()).collect();
    let header = BlockHeader {
        version: BLOCK_VERSION,
        height,
        prev_hash: tip_hash,
        merkle_root: merkle_root(&txids),
        timestamp_ms: g.slot_start_ms(height),
        slot: height,
        round: 0,
        producer: 0,
        last_commit_hash: last_commit_hash(&last_commit),
    };
    let mut block = Block { header, producer_sig: Signature([0; 64]), txs: all, last_commit };
    block.sign(&devnet_validator_key("validator1"), &g.chain_id);
    let cert = certify(g, &block);
    (block, cert)
}

fn open_in(dir: &TempDir, g: &GenesisConfig) -> Store {
    Store::open(&dir.path().join("chain.redb"), g).unwrap()
}

/// Every output `utxos_for_address_oldest` visits for `a`, in its order.
fn oldest_first(store: &Store, a: &Address) -> Vec<(OutPoint, TxOut)> {
    let mut seen = Vec::new();
    store
        .utxos_for_address_oldest(a, |op, out| {
            seen.push((*op, out));
            false
        })
        .unwrap();
    seen
}

/// Everything a failed commit must leave untouched.
fn snapshot(store: &Store) -> (u64, BlockHash, UtxoSetInfo, Vec<(OutPoint, TxOut, u64)>) {
    let (h, hash) = store.tip().unwrap();
    (h, hash, store.utxo_set_info().unwrap(), store.utxos_for_address(&wallet("validator1")).unwrap())
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn genesis_is_created_and_reopened() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    // A missing parent directory is created.
    let path = dir.path().join("nested/data/chain.redb");
    let store = Store::open(&path, &g).unwrap();
    let genesis = g.genesis_block();
    assert_eq!(store.tip().unwrap(), (0, g.genesis_hash()));
    assert_eq!(store.block_by_height(0).unwrap(), Some(genesis.clone()));
    assert_eq!(store.block_by_hash(&g.genesis_hash()).unwrap(), Some(genesis.clone()));
    assert_eq!(store.block_hash_at(0).unwrap(), Some(g.genesis_hash()));
    assert_eq!(store.height_of(&g.genesis_hash()).unwrap(), Some(0));
    assert_eq!(store.cert_at(0).unwrap(), None);
    assert_eq!(store.block_by_height(1).unwrap(), None);
    assert!(store.blocks_range(0, 10).unwrap().is_empty());
    assert_eq!(store.tx_location(&genesis.txs[0].txid()).unwrap(), Some((0, 0)));
    assert_eq!(store.utxos_for_address(&wallet("validator1")).unwrap().len(), 20);
    let info = store.utxo_set_info().unwrap();
    assert_eq!((info.height, info.tip, info.count, info.total), (0, g.genesis_hash(), 60, 3 * 20 * 50_000 * COIN));
    assert!(store.size_on_disk() > 0);
    drop(store);

    let again = Store::open(&path, &g).unwrap();
    assert_eq!(again.tip().unwrap(), (0, g.genesis_hash()));
    assert_eq!(again.utxo_set_info().unwrap(), info);
}

#[test]
fn commit_updates_utxos_and_indexes() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let store = open_in(&dir, &g);
    let alice = addr("alice");

    // Block 1: validator1 pays alice, and a second transaction in the same block spends the change.
    let pay = spend(
        &g,
        "validator1",
        vec![genesis_op(&g, 0)],
        vec![(alice, 10 * COIN), (wallet("validator1"), 49_989 * COIN)],
    );
    let pay_id = pay.txid();
    let change = OutPoint { txid: pay_id, vout: 1 };
    let respend = spend(&g, "validator1", vec![change], vec![(alice, 49_988 * COIN)]);
    let (b1, c1) = next_block(&store, &g, vec![pay.clone(), respend.clone()]);
    store.commit_block(&b1, &c1).unwrap();

    assert_eq!(store.tip().unwrap(), (1, b1.hash()));
    assert_eq!(store.block_by_height(1).unwrap(), Some(b1.clone()));
    assert_eq!(store.block_by_hash(&b1.hash()).unwrap(), Some(b1.clone()));
    assert_eq!(store.block_hash_at(1).unwrap(), Some(b1.hash()));
    assert_eq!(store.height_of(&b1.hash()).unwrap(), Some(1));
    assert_eq!(store.cert_at(1).unwrap(), Some(c1.clone()));
    assert_eq!(store.get_utxo(&genesis_op(&g, 0)).unwrap(), None);
    assert_eq!(store.get_utxo(&change).unwrap(), None);
    assert_eq!(
        store.get_utxo(&OutPoint { txid: pay_id, vout: 0 }).unwrap(),
        Some(TxOut { value: 10 * COIN, address: alice })
    );
    assert_eq!(store.tx_location(&pay_id).unwrap(), Some((1, 1)));
    assert_eq!(store.tx_location(&respend.txid()).unwrap(), Some((1, 2)));
    assert_eq!(store.get_tx(&respend.txid()).unwrap(), Some((respend.clone(), 1)));
    assert_eq!(store.get_tx(&Hash256::digest(b"nope")).unwrap(), None);
    let block1 = store.block_hash_at(1).unwrap().expect("block 1");
    assert_eq!(store.tx_block(&respend.txid()).unwrap(), Some((1, block1)));
    assert_eq!(store.tx_block(&Hash256::digest(b"nope")).unwrap(), None);
    let nope = Hash256::digest(b"nope");
    assert_eq!(store.in_chain(&[pay_id, nope, respend.txid()]).unwrap(), vec![true, false, true]);
    assert_eq!(store.in_chain(&[]).unwrap(), Vec::<bool>::new());

    let mine = store.utxos_for_address(&alice).unwrap();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|(_, out, h)| out.address == alice && *h == 1));
    assert_eq!(mine.iter().map(|(_, o, _)| o.value).sum::<u64>(), 10 * COIN + 49_988 * COIN);
    let v1 = store.utxos_for_address(&wallet("validator1")).unwrap();
    assert_eq!(v1.len(), 19);
    assert!(!v1.iter().any(|(op, _, _)| *op == genesis_op(&g, 0)));
    assert_eq!(store.utxos_for_address(&addr("miner")).unwrap().len(), 1);

    // Block 2 spends an output of block 1; the UtxoView the validator uses sees the same set.
    let alice_op = OutPoint { txid: pay_id, vout: 0 };
    assert!(UtxoView::get_utxo(&store, &alice_op).is_some());
    let mut from_alice =
        Transaction::unsigned(vec![alice_op], vec![TxOut { value: 9 * COIN, address: addr("bob") }], 0, None);
    from_alice.sign_all(&Keypair::insecure_from_label("alice"), &g.chain_id);
    let (b2, c2) = next_block(&store, &g, vec![from_alice.clone()]);
    assert_eq!(b2.last_commit.as_ref(), Some(&c1));
    store.commit_block(&b2, &c2).unwrap();
    assert_eq!(UtxoView::get_utxo(&store, &alice_op), None);
    assert_eq!(store.utxos_for_address(&alice).unwrap().len(), 1);
    assert_eq!(store.utxos_for_address(&addr("bob")).unwrap()[0].2, 2);

    // Oldest first, and only as far as the visitor wants: the miner's rewards of blocks 1 and 2
    // come in height order; validator1's genesis outputs (all height 0) in outpoint order.
    let visit_all = |a: &Address| oldest_first(&store, a);
    let heights = |seen: &[(OutPoint, TxOut)]| {
        seen.iter().map(|(op, _)| store.tx_location(&op.txid).unwrap().unwrap().0).collect::<Vec<_>>()
    };
    assert_eq!(heights(&visit_all(&addr("miner"))), vec![1, 2]);
    let mut by_outpoint: Vec<(OutPoint, TxOut)> =
        store.utxos_for_address(&wallet("validator1")).unwrap().into_iter().map(|(op, o, _)| (op, o)).collect();
    by_outpoint.sort_by_key(|(op, _)| *op);
    assert_eq!(visit_all(&wallet("validator1")), by_outpoint);
    let mut first = Vec::new();
    store
        .utxos_for_address_oldest(&wallet("validator1"), |op, _| {
            first.push(*op);
            first.len() == 3
        })
        .unwrap();
    assert_eq!(first, by_outpoint[..3].iter().map(|(op, _)| *op).collect::<Vec<_>>());

    let range = store.blocks_range(0, 100).unwrap();
    assert_eq!(range, vec![(b1.clone(), c1), (b2.clone(), c2.clone())]);
    assert_eq!(store.blocks_range(2, 2).unwrap(), vec![(b2, c2)]);
    assert!(store.blocks_range(3, 2).unwrap().is_empty());

    // Fees are not collected into the coinbase here, so the total only grows by the rewards
    // minus what the spends burned as fees.
    let info = store.utxo_set_info().unwrap();
    let fees = COIN + COIN + COIN;
    assert_eq!(info.total, 3 * 20 * 50_000 * COIN + 2 * BLOCK_REWARD - fees);
    assert_eq!(info.height, 2);
}

#[test]
fn block_with_missing_input_changes_nothing() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let store = open_in(&dir, &g);
    let before = snapshot(&store);

    // A valid spend first, so a partial application would be visible.
    let good = spend(&g, "validator1", vec![genesis_op(&g, 1)], vec![(addr("alice"), COIN)]);
    let ghost = OutPoint { txid: Hash256::digest(b"never created"), vout: 0 };
    let bad = spend(&g, "validator1", vec![ghost], vec![(addr("alice"), COIN)]);
    let (block, cert) = next_block(&store, &g, vec![good.clone(), bad]);
    match store.commit_block(&block, &cert) {
        Err(StoreError::MissingInput { height: 1, outpoint }) => assert_eq!(outpoint, ghost),
        other => panic!("expected MissingInput, got {other:?}"),
    }
    assert_eq!(snapshot(&store), before);
    assert!(store.get_utxo(&genesis_op(&g, 1)).unwrap().is_some());
    assert_eq!(store.tx_location(&good.txid()).unwrap(), None);
    assert_eq!(store.height_of(&block.hash()).unwrap(), None);
    assert_eq!(store.cert_at(1).unwrap(), None);

    // Spending an output twice in one block, or again after it was spent, is refused as well.
    let first = spend(&g, "validator1", vec![genesis_op(&g, 2)], vec![(addr("alice"), COIN)]);
    let twice = spend(&g, "validator1", vec![genesis_op(&g, 2)], vec![(addr("bob"), COIN)]);
    let (block, cert) = next_block(&store, &g, vec![first.clone(), twice.clone()]);
    assert!(matches!(store.commit_block(&block, &cert), Err(StoreError::MissingInput { .. })));
    assert_eq!(snapshot(&store), before);
    let (block, cert) = next_block(&store, &g, vec![first]);
    store.commit_block(&block, &cert).unwrap();
    let (block, cert) = next_block(&store, &g, vec![twice]);
    assert!(matches!(store.commit_block(&block, &cert), Err(StoreError::MissingInput { height: 2, .. })));
    assert_eq!(store.tip().unwrap().0, 1);
}

#[test]
fn repeated_transaction_is_refused_and_changes_nothing() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let store = open_in(&dir, &g);
    let before = snapshot(&store);
    let pay = spend(&g, "validator1", vec![genesis_op(&g, 1)], vec![(addr("alice"), COIN)]);
    // Twice in one block: the second copy would overwrite the first's outputs and index entry.
    let (block, cert) = next_block(&store, &g, vec![pay.clone(), pay.clone()]);
    match store.commit_block(&block, &cert) {
        Err(StoreError::DuplicateTx { height: 1, txid }) => assert_eq!(txid, pay.txid()),
        other => panic!("expected DuplicateTx, got {other:?}"),
    }
    assert_eq!(snapshot(&store), before);
    // Once in the chain, it cannot come again in a later block.
    let (block, cert) = next_block(&store, &g, vec![pay.clone()]);
    store.commit_block(&block, &cert).unwrap();
    let after_first = snapshot(&store);
    let (block, cert) = next_block(&store, &g, vec![pay.clone()]);
    match store.commit_block(&block, &cert) {
        Err(StoreError::DuplicateTx { height: 2, txid }) => assert_eq!(txid, pay.txid()),
        other => panic!("expected DuplicateTx, got {other:?}"),
    }
    assert_eq!(snapshot(&store), after_first);
    assert_eq!(store.tx_location(&pay.txid()).unwrap(), Some((1, 1)));
}

#[test]
fn wrong_height_parent_or_cert_is_refused() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let store = open_in(&dir, &g);
    let before = snapshot(&store);
    let (block, _) = next_block(&store, &g, vec![]);

    let mut skip = block.clone();
    skip.header.height = 2;
    let cert = certify(&g, &skip);
    assert!(matches!(store.commit_block(&skip, &cert), Err(StoreError::WrongHeight { tip: 0, got: 2 })));

    // Re-committing genesis (height 0 on tip 0) is a wrong height too.
    let genesis = g.genesis_block();
    let cert = certify(&g, &genesis);
    assert!(matches!(store.commit_block(&genesis, &cert), Err(StoreError::WrongHeight { tip: 0, got: 0 })));

    let mut orphan = block.clone();
    orphan.header.prev_hash = Hash256::digest(b"elsewhere");
    let cert = certify(&g, &orphan);
    match store.commit_block(&orphan, &cert) {
        Err(StoreError::WrongParent { height: 1, expected, got }) => {
            assert_eq!(expected, g.genesis_hash());
            assert_eq!(got, orphan.header.prev_hash);
        }
        other => panic!("expected WrongParent, got {other:?}"),
    }

    let foreign = certify(&g, &orphan);
    assert!(matches!(store.commit_block(&block, &foreign), Err(StoreError::CertMismatch { .. })));
    assert_eq!(snapshot(&store), before);

    let cert = certify(&g, &block);
    store.commit_block(&block, &cert).unwrap();
    // The same block again no longer extends the tip.
    assert!(matches!(store.commit_block(&block, &cert), Err(StoreError::WrongHeight { tip: 1, got: 1 })));
}

#[test]
fn reopen_keeps_height_utxos_and_finalized_pending() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    let store = Store::open(&path, &g).unwrap();
    let included = spend(&g, "validator2", vec![genesis_op(&g, 20)], vec![(addr("alice"), COIN)]);
    let waiting = spend(&g, "validator3", vec![genesis_op(&g, 40)], vec![(addr("bob"), COIN)]);
    let later = spend(&g, "validator3", vec![genesis_op(&g, 41)], vec![(addr("bob"), COIN)]);
    store.put_finalized(&included, 1_000).unwrap();
    store.put_finalized(&later, 3_000).unwrap();
    store.put_finalized(&waiting, 2_000).unwrap();
    assert!(store.is_finalized_pending(&included.txid()).unwrap());

    // Committing a block removes its transactions from the pending table.
    let (b1, c1) = next_block(&store, &g, vec![included.clone()]);
    store.commit_block(&b1, &c1).unwrap();
    assert!(!store.is_finalized_pending(&included.txid()).unwrap());
    // Finality reported again for a transaction already in a block is not kept as pending.
    store.put_finalized(&included, 4_000).unwrap();
    assert!(!store.is_finalized_pending(&included.txid()).unwrap());
    let (b2, c2) = next_block(&store, &g, vec![]);
    store.commit_block(&b2, &c2).unwrap();
    let info = store.utxo_set_info().unwrap();
    drop(store);

    let store = Store::open(&path, &g).unwrap();
    assert_eq!(store.tip().unwrap(), (2, b2.hash()));
    assert_eq!(store.utxo_set_info().unwrap(), info);
    assert_eq!(store.cert_at(2).unwrap(), Some(c2));
    // Oldest finality first.
    assert_eq!(store.finalized_pending().unwrap(), vec![(waiting.clone(), 2_000), (later.clone(), 3_000)]);
    assert!(store.is_finalized_pending(&waiting.txid()).unwrap());
    assert!(!store.is_finalized_pending(&included.txid()).unwrap());
    // The log's sequence goes on after a reopen: nothing written before is overwritten.
    let third = spend(&g, "validator3", vec![genesis_op(&g, 42)], vec![(addr("bob"), COIN)]);
    store.put_finalized(&third, 3_000).unwrap();
    assert_eq!(
        store.finalized_pending().unwrap(),
        vec![(waiting.clone(), 2_000), (later.clone(), 3_000), (third.clone(), 3_000)]
    );
    // A block holding some of them takes exactly those out.
    let (b3, c3) = next_block(&store, &g, vec![waiting.clone(), third.clone()]);
    store.commit_block(&b3, &c3).unwrap();
    assert_eq!(store.finalized_pending().unwrap(), vec![(later, 3_000)]);
}

/// A format-1 store (finalized transactions keyed by txid) opens as format 2 with the same
/// finalized transactions, oldest first, and the old table gone.
#[test]
fn format_1_is_migrated() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    let store = Store::open(&path, &g).unwrap();
    let (b1, c1) = next_block(&store, &g, vec![]);
    store.commit_block(&b1, &c1).unwrap();
    drop(store);
    let a = spend(&g, "validator2", vec![genesis_op(&g, 20)], vec![(addr("alice"), COIN)]);
    let b = spend(&g, "validator3", vec![genesis_op(&g, 40)], vec![(addr("bob"), COIN)]);
    {
        // Rewrite it as format 1 wrote it.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(FINALIZED_LOG).unwrap();
        {
            let mut old = txn.open_table(FINALIZED_PENDING_V1).unwrap();
            old.insert(&b.txid().0, encode(&(&b, 2_000u64)).as_slice()).unwrap();
            old.insert(&a.txid().0, encode(&(&a, 1_000u64)).as_slice()).unwrap();
        }
        txn.open_table(META).unwrap().insert(META_FORMAT_VERSION, 1u32.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, &g).unwrap();
    assert_eq!(store.tip().unwrap(), (1, b1.hash()));
    assert_eq!(store.finalized_pending().unwrap(), vec![(a.clone(), 1_000), (b.clone(), 2_000)]);
    assert!(store.is_finalized_pending(&a.txid()).unwrap());
    drop(store);
    let db = Database::create(&path).unwrap();
    let rtx = db.begin_read().unwrap();
    let version = rtx.open_table(META).unwrap().get(META_FORMAT_VERSION).unwrap().unwrap().value().to_vec();
    assert_eq!(version, STORE_FORMAT_VERSION.to_be_bytes());
    assert!(matches!(rtx.open_table(FINALIZED_PENDING_V1), Err(TableError::TableDoesNotExist(_))));
}

#[test]
fn other_genesis_is_refused() {
    let g = devnet();
    let other = GenesisConfig::devnet(4, 10);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    drop(Store::open(&path, &g).unwrap());
    match Store::open(&path, &other) {
        Err(StoreError::GenesisMismatch { stored, expected, path: p }) => {
            assert_eq!(stored, g.genesis_hash());
            assert_eq!(expected, other.genesis_hash());
            assert_eq!(p, path);
        }
        other => panic!("expected GenesisMismatch, got {other:?}"),
    }
    // The refused open left the store intact.
    assert_eq!(Store::open(&path, &g).unwrap().tip().unwrap(), (0, g.genesis_hash()));
}

#[test]
fn newer_format_is_refused() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    drop(Store::open(&path, &g).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT_VERSION, (STORE_FORMAT_VERSION + 1).to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path, &g).unwrap_err();
    assert!(
        matches!(&err, StoreError::NewerFormat { found, supported: STORE_FORMAT_VERSION, path: p } if *found == STORE_FORMAT_VERSION + 1 && *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn utxo_hash_tracks_content() {
    let g = devnet();
    let build = |to: &str| {
        let dir = TempDir::new().unwrap();
        let store = open_in(&dir, &g);
        let tx = spend(&g, "validator1", vec![genesis_op(&g, 5)], vec![(addr(to), 7 * COIN)]);
        let (b, c) = next_block(&store, &g, vec![tx]);
        store.commit_block(&b, &c).unwrap();
        let (b, c) = next_block(&store, &g, vec![]);
        store.commit_block(&b, &c).unwrap();
        store.utxo_set_info().unwrap()
    };
    let a = build("alice");
    let same = build("alice");
    let different = build("bob");
    assert_eq!(a, same);
    // Same count and total; only one output's address differs.
    assert_eq!((a.count, a.total), (different.count, different.total));
    assert_ne!(a.hash, different.hash);
    let rpc = a.to_rpc();
    assert_eq!(rpc.hash_serialized, a.hash.to_hex());
    assert_eq!(rpc.bestblock, a.tip.to_hex());
    assert_eq!(rpc.txouts, a.count);
}

#[test]
fn second_open_reports_in_use() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    let first = Store::open(&path, &g).unwrap();
    let err = Store::open(&path, &g).unwrap_err();
    assert!(matches!(&err, StoreError::InUse { path: p } if *p == path), "{err:?}");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(first);
    Store::open(&path, &g).unwrap();
}

/// Everything a reader sees of the UTXO set: its summary, and per address both listings.
type UtxoReads = (UtxoSetInfo, Vec<Vec<(OutPoint, TxOut, u64)>>, Vec<Vec<(OutPoint, TxOut)>>);

fn utxo_reads(store: &Store, addrs: &[Address]) -> UtxoReads {
    let listed = addrs.iter().map(|a| store.utxos_for_address(a).unwrap()).collect();
    let oldest = addrs.iter().map(|a| oldest_first(store, a)).collect();
    (store.utxo_set_info().unwrap(), listed, oldest)
}

/// Held UTXO changes are invisible to readers: a store that writes its UTXO tables every third
/// block reads, block after block, exactly like one that writes them with every block, whether
/// an output is spent in its own block, a few blocks later from memory, or long after from the
/// tables; and again after a reopen replays the blocks above its UTXO height.
#[test]
fn held_utxo_changes_read_like_written_ones() {
    let g = devnet();
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let path_a = dir_a.path().join("chain.redb");
    let mut held = Store::open(&path_a, &g).unwrap();
    let mut every = open_in(&dir_b, &g);
    every.write_every_block();
    let me = wallet("validator1");
    let addrs = [me, addr("alice"), addr("miner")];
    // validator1's spendable outputs: its genesis outputs, then its change.
    let mut coins: Vec<(OutPoint, u64)> = (0..20).map(|v| (genesis_op(&g, v), 50_000 * COIN)).collect();
    for round in 0..14u64 {
        // Every fourth block has only its coinbase.
        let txs = if round % 4 == 3 {
            Vec::new()
        } else {
            // The newest coin (often made one block ago, so still held) and the oldest (from
            // the tables), into a payment to alice and change; then the change again in the
            // same block.
            let newest = coins.pop().unwrap();
            let oldest = coins.remove(0);
            let value = newest.1 + oldest.1;
            let pay =
                spend(&g, "validator1", vec![newest.0, oldest.0], vec![(addr("alice"), COIN), (me, value - 2 * COIN)]);
            let change = OutPoint { txid: pay.txid(), vout: 1 };
            let again = spend(&g, "validator1", vec![change], vec![(me, value - 3 * COIN)]);
            coins.push((OutPoint { txid: again.txid(), vout: 0 }, value - 3 * COIN));
            vec![pay, again]
        };
        let (block, cert) = next_block(&held, &g, txs);
        held.commit_block(&block, &cert).unwrap();
        every.commit_block(&block, &cert).unwrap();
        assert_eq!(utxo_reads(&held, &addrs), utxo_reads(&every, &addrs), "after block {}", round + 1);
        for b in 1..=round + 1 {
            for tx in held.block_by_height(b).unwrap().unwrap().txs {
                let t = tx.txid();
                assert_eq!(held.tx_location(&t).unwrap(), every.tx_location(&t).unwrap());
                assert_eq!(held.tx_block(&t).unwrap(), every.tx_block(&t).unwrap());
                assert_eq!(held.get_tx(&t).unwrap(), every.get_tx(&t).unwrap());
                assert_eq!(held.in_chain(&[t]).unwrap(), vec![true]);
            }
        }
        for (op, _) in coins.iter().take(3).chain(coins.iter().rev().take(3)) {
            assert_eq!(held.get_utxo(op).unwrap(), every.get_utxo(op).unwrap());
            assert!(held.get_utxo(op).unwrap().is_some());
        }
        if round == 6 || round == 10 {
            // Blocks 7 and 11 are one and two above the last written UTXO height.
            drop(held);
            held = Store::open(&path_a, &g).unwrap();
            assert_eq!(utxo_reads(&held, &addrs), utxo_reads(&every, &addrs), "reopened after block {}", round + 1);
        }
    }
}

/// A held block's transactions are in the chain for every reader and for the checks: a spend
/// of an output that a held block already spent is refused like one the tables no longer have,
/// a transaction it holds cannot come again, and its finality is not logged as pending.
#[test]
fn a_held_block_is_in_the_chain() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let store = open_in(&dir, &g);
    let first = spend(&g, "validator1", vec![genesis_op(&g, 0)], vec![(addr("alice"), COIN)]);
    // Empty blocks until the next height writes another range than this transaction's and
    // the genesis output's, so both stay held.
    let ranges = [overlay::slice_of(&first.txid()), overlay::slice_of(&genesis_op(&g, 0).txid)];
    while ranges.contains(&((store.tip().unwrap().0 + 1) as usize % overlay::SLICES)) {
        let (b, c) = next_block(&store, &g, vec![]);
        store.commit_block(&b, &c).unwrap();
    }
    let (b1, c1) = next_block(&store, &g, vec![first.clone()]);
    let h = b1.height();
    store.commit_block(&b1, &c1).unwrap();
    assert!(store.overlay().location(&first.txid()).is_some());
    assert!(matches!(store.overlay().lookup(&genesis_op(&g, 0)), Lookup::Spent));
    assert_eq!(store.get_utxo(&genesis_op(&g, 0)).unwrap(), None);
    assert_eq!(store.tx_location(&first.txid()).unwrap(), Some((h, 1)));
    assert_eq!(store.tx_block(&first.txid()).unwrap(), Some((h, b1.hash())));
    assert_eq!(store.get_tx(&first.txid()).unwrap(), Some((first.clone(), h)));
    let nope = Hash256::digest(b"nope");
    assert_eq!(store.in_chain(&[nope, first.txid()]).unwrap(), vec![false, true]);
    assert_eq!(store.in_chain(&[first.txid()]).unwrap(), vec![true]);
    store.put_finalized(&first, 5).unwrap();
    assert!(!store.is_finalized_pending(&first.txid()).unwrap());
    let before = snapshot(&store);
    let (again, again_cert) = next_block(&store, &g, vec![first.clone()]);
    assert!(matches!(
        store.commit_block(&again, &again_cert),
        Err(StoreError::DuplicateTx { height, txid }) if txid == first.txid() && height == h + 1
    ));
    assert_eq!(snapshot(&store), before);
    let second = spend(&g, "validator1", vec![genesis_op(&g, 0)], vec![(addr("bob"), COIN)]);
    let (b2, c2) = next_block(&store, &g, vec![second]);
    assert!(matches!(
        store.commit_block(&b2, &c2),
        Err(StoreError::MissingInput { height, outpoint }) if outpoint == genesis_op(&g, 0) && height == h + 1
    ));
    assert_eq!(snapshot(&store), before);
    // An output a held block created can be spent.
    let alice_op = OutPoint { txid: first.txid(), vout: 0 };
    let mut from_alice =
        Transaction::unsigned(vec![alice_op], vec![TxOut { value: COIN / 2, address: addr("bob") }], 0, None);
    from_alice.sign_all(&Keypair::insecure_from_label("alice"), &g.chain_id);
    let (b2, c2) = next_block(&store, &g, vec![from_alice]);
    store.commit_block(&b2, &c2).unwrap();
    assert_eq!(store.get_utxo(&alice_op).unwrap(), None);
}

/// A format-2 store (UTXO tables always at the tip, no UTXO height) opens as format 3 at the
/// same UTXO set, and takes blocks.
#[test]
fn format_2_is_migrated() {
    let g = devnet();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("chain.redb");
    let mut store = Store::open(&path, &g).unwrap();
    store.write_every_block();
    let tx = spend(&g, "validator1", vec![genesis_op(&g, 3)], vec![(addr("alice"), COIN)]);
    let (b1, c1) = next_block(&store, &g, vec![tx]);
    store.commit_block(&b1, &c1).unwrap();
    let info = store.utxo_set_info().unwrap();
    drop(store);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.remove(META_WRITTEN).unwrap();
            meta.insert(META_FORMAT_VERSION, 2u32.to_be_bytes().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, &g).unwrap();
    assert_eq!(store.utxo_set_info().unwrap(), info);
    let (b2, c2) = next_block(&store, &g, vec![]);
    store.commit_block(&b2, &c2).unwrap();
    drop(store);
    let db = Database::create(&path).unwrap();
    let rtx = db.begin_read().unwrap();
    let meta = rtx.open_table(META).unwrap();
    assert_eq!(meta.get(META_FORMAT_VERSION).unwrap().unwrap().value(), STORE_FORMAT_VERSION.to_be_bytes());
    // Migrated at height 1; block 2 then wrote its turn's slice.
    let mut expected = [1; overlay::SLICES];
    expected[2] = 2;
    assert_eq!(read_written(&meta).unwrap(), expected);
}

/// A format-3 store (address index keyed by address first) opens as format 4 with the same
/// listings as a store that never was format 3, the old table gone, and takes blocks that
/// write every key range after it.
#[test]
fn format_3_is_migrated() {
    let g = devnet();
    let (dir, dir_twin) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let path = dir.path().join("chain.redb");
    let mut store = Store::open(&path, &g).unwrap();
    let twin = open_in(&dir_twin, &g);
    let me = wallet("validator1");
    let addrs = [me, addr("alice"), addr("bob"), addr("miner")];
    let both = |store: &Store, txs: Vec<Transaction>| {
        let (block, cert) = next_block(store, &g, txs);
        store.commit_block(&block, &cert).unwrap();
        twin.commit_block(&block, &cert).unwrap();
    };
    // Five payments, each from its own genesis output, to alice and bob with change.
    for v in 0..5u32 {
        let pay = spend(
            &g,
            "validator1",
            vec![genesis_op(&g, v)],
            vec![(addr("alice"), COIN), (addr("bob"), 2 * COIN), (me, 40_000 * COIN)],
        );
        both(&store, vec![pay]);
    }
    let before = utxo_reads(&store, &addrs);
    drop(store);
    {
        // Rewrite the address index as format 3 kept it.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut entries = Vec::new();
        for entry in txn.open_table(ADDRESS_INDEX).unwrap().iter().unwrap() {
            let (k, height) = entry.unwrap();
            let old: [u8; ADDRESS_OUTPOINT_LEN] = k.value()[1..].try_into().unwrap();
            entries.push((old, height.value()));
        }
        assert!(entries.len() > 20, "the tables hold entries to migrate");
        txn.delete_table(ADDRESS_INDEX).unwrap();
        {
            let mut old = txn.open_table(ADDRESS_UTXOS_V3).unwrap();
            for (k, height) in &entries {
                old.insert(k, *height).unwrap();
            }
        }
        txn.open_table(META).unwrap().insert(META_FORMAT_VERSION, 3u32.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    store = Store::open(&path, &g).unwrap();
    assert_eq!(utxo_reads(&store, &addrs), before);
    assert_eq!(utxo_reads(&store, &addrs), utxo_reads(&twin, &addrs));
    // Spends of migrated entries, over enough blocks to write every key range again.
    for v in 0..(overlay::SLICES as u32 + 1) {
        let txs = if v < 5 {
            let change =
                OutPoint { txid: store.block_by_height(u64::from(v) + 1).unwrap().unwrap().txs[1].txid(), vout: 2 };
            vec![spend(&g, "validator1", vec![change], vec![(addr("alice"), 39_999 * COIN)])]
        } else {
            Vec::new()
        };
        both(&store, txs);
        assert_eq!(utxo_reads(&store, &addrs), utxo_reads(&twin, &addrs), "block {v} after the migration");
    }
    drop(store);
    let db = Database::create(&path).unwrap();
    let rtx = db.begin_read().unwrap();
    let version = rtx.open_table(META).unwrap().get(META_FORMAT_VERSION).unwrap().unwrap().value().to_vec();
    assert_eq!(version, 4u32.to_be_bytes());
    assert!(matches!(rtx.open_table(ADDRESS_UTXOS_V3), Err(TableError::TableDoesNotExist(_))));
}
