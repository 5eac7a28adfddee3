//! Micro-benchmarks of the `timed` library: signatures, transaction validation, the mempool,
//! Snowball bookkeeping and the redb chain store. Plain `fn main` (harness = false) so the
//! figures come out as one table without extra dependencies.
//!
//!     cargo bench -p timed --bench ledger
//!
//! `BENCH_LEDGER_SECS` (default 1) sets how long each case runs. The store lives in a temp dir
//! (`TMPDIR`), so its figures include real fsyncs on that file system.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timed::chain::amount::{min_fee, COIN};
use timed::chain::block::{vote_payload, VOTE_PRECOMMIT};
use timed::chain::crypto::{self, Domain};
use timed::chain::genesis::{devnet_validator_key, devnet_wallet_key};
use timed::chain::validate::check_transaction;
use timed::chain::{
    Address, Block, CommitCert, GenesisConfig, Hash256, Keypair, Network, OutPoint, Transaction, TxOut, Txid,
};
use timed::consensus::snowball::{Snowball, SnowballParams};
use timed::mempool::{Mempool, TxStatus, DEFAULT_MAX_BYTES};
use timed::node::ledger::Ledger;
use timed::storage::Store;

/// One line of the result table.
struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
    note: String,
}

struct Bench {
    target: Duration,
    rows: Vec<Row>,
}

impl Bench {
    /// Runs `batch` until at least `target` of measured time has accumulated. Each call returns
    /// how many operations it did and how long the measured part took, so per-batch setup
    /// (fresh mempools, cloning inputs) stays out of the figure.
    fn run(&mut self, name: &str, note: &str, mut batch: impl FnMut() -> (u64, Duration)) -> f64 {
        // `BENCH_LEDGER_ONLY=verify` runs the cases whose name contains it (A/B runs of one
        // case need repeats; the whole set takes about a minute). Setup still runs.
        if Bench::skips(name) {
            return 0.0;
        }
        batch(); // warm-up: caches, allocator, lazily opened tables
        let (mut ops, mut elapsed) = (0u64, Duration::ZERO);
        while elapsed < self.target {
            let (n, t) = batch();
            ops += n;
            elapsed += t;
        }
        self.push(name, ops, elapsed, note)
    }

    /// Whether `BENCH_LEDGER_ONLY` leaves the case `name` out.
    fn skips(name: &str) -> bool {
        std::env::var("BENCH_LEDGER_ONLY").is_ok_and(|only| !name.contains(&only))
    }

    /// Records a measurement taken elsewhere; returns ops/s.
    fn push(&mut self, name: &str, ops: u64, elapsed: Duration, note: &str) -> f64 {
        let row = Row { name: name.into(), ops, elapsed, note: note.into() };
        println!("{}", fmt_row(&row));
        self.rows.push(row);
        ops as f64 / elapsed.as_secs_f64()
    }
}

fn fmt_row(r: &Row) -> String {
    let secs = r.elapsed.as_secs_f64();
    format!(
        "| {:<52} | {:>9} | {:>6.2} | {:>12.0} | {:>10.2} | {} |",
        r.name,
        r.ops,
        secs,
        r.ops as f64 / secs,
        secs * 1e6 / r.ops as f64,
        r.note
    )
}

/// Times `f` alone and returns its result with the duration.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// CPU time of the calling thread: the disk's fsync time varies between runs far more than the
/// work of a commit does.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The typical wallet payment: one input, a payment and change back to the payer.
fn payment(
    key: &Keypair,
    from: &Address,
    to: &Address,
    prevout: OutPoint,
    value: u64,
    fee: u64,
    chain: &str,
) -> Transaction {
    let pay = COIN / 100;
    let mut tx = Transaction::unsigned(
        vec![prevout],
        vec![TxOut { value: pay, address: *to }, TxOut { value: value - pay - fee, address: *from }],
        0,
        None,
    );
    tx.sign_all(key, chain);
    tx
}

/// The fee `payment` needs: bincode's fixed-width integers make the size independent of values.
fn payment_fee(key: &Keypair, from: &Address, to: &Address, chain: &str) -> u64 {
    let probe = payment(key, from, to, OutPoint { txid: Hash256::ZERO, vout: 0 }, COIN, 0, chain);
    min_fee(probe.size())
}

/// Distinct fake outpoints for in-memory UTXO views.
fn fake_outpoint(i: u64) -> OutPoint {
    OutPoint { txid: Hash256::tagged("bench-utxo", &[&i.to_le_bytes()]), vout: (i % 3) as u32 }
}

const CHAIN: &str = "bench-chain";
const NET: u8 = Network::Testnet as u8;

fn bench_crypto(b: &mut Bench) {
    let key = Keypair::insecure_from_label("bench-signer");
    let payload = Hash256::digest(b"a txid-sized payload").0;
    let sig = key.sign(Domain::Transaction, CHAIN, &payload);
    let pk = key.public();
    b.run("ed25519 sign (Keypair::sign)", "32-byte payload", || {
        timed(|| {
            for _ in 0..500 {
                black_box(key.sign(Domain::Transaction, CHAIN, black_box(&payload)));
            }
            500
        })
    });
    b.run("ed25519 strict verify (crypto::verify)", "32-byte payload", || {
        timed(|| {
            for _ in 0..500 {
                assert!(crypto::verify(black_box(&pk), Domain::Transaction, CHAIN, black_box(&payload), &sig));
            }
            500
        })
    });
}

/// Signature checks as the gossip workers could do them: N payments from N keys per round,
/// one by one with `verify_strict`, then as one batch (`chain::batch::verify_many`, same
/// verdicts). Two reference rows show where the batch's time goes: the bare batch equation
/// (what a plain random-linear-combination batch costs, without the checks that make it agree
/// with strict) and the prime-subgroup check that every `R` needs for that agreement.
fn bench_batch_verify(b: &mut Bench) {
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use timed::chain::batch::{verify_many, verify_strict, Item};
    for n in [64usize, 512] {
        let keys: Vec<Keypair> = (0..n).map(|i| Keypair::insecure_from_label(&format!("bench-batch-{i}"))).collect();
        let txids: Vec<Hash256> = (0..n).map(|i| Hash256::tagged("bench-txid", &[&(i as u64).to_le_bytes()])).collect();
        let msgs: Vec<Vec<u8>> =
            txids.iter().map(|t| crypto::signing_message(Domain::Transaction, CHAIN, &t.0)).collect();
        let pks: Vec<_> = keys.iter().map(|k| k.public()).collect();
        let sigs: Vec<[u8; 64]> =
            keys.iter().zip(&txids).map(|(k, t)| k.sign(Domain::Transaction, CHAIN, &t.0).0).collect();
        let items: Vec<Item> = (0..n).map(|i| Item { pk: &pks[i], msg: &msgs[i], sig: &sigs[i] }).collect();
        if n == 64 {
            b.run("ed25519 verify_strict one by one", "per signature", || {
                timed(|| {
                    for it in &items {
                        assert!(verify_strict(black_box(it)));
                    }
                    n as u64
                })
            });
        }
        b.run(&format!("ed25519 batch::verify_many, batches of {n}"), "per signature; keys' check cached", || {
            timed(|| {
                assert!(verify_many(black_box(&items)).iter().all(|ok| *ok));
                n as u64
            })
        });
        if n == 64 {
            let mut bad = sigs.clone();
            bad[n / 2][40] ^= 1;
            let bad_items: Vec<Item> = (0..n).map(|i| Item { pk: &pks[i], msg: &msgs[i], sig: &bad[i] }).collect();
            b.run("ed25519 batch::verify_many, 64 with one bad", "per signature; then one by one", || {
                timed(|| {
                    assert_eq!(verify_many(black_box(&bad_items)).iter().filter(|ok| !**ok).count(), 1);
                    n as u64
                })
            });
        }
        // Reference: the equation alone, Σ z(S·B - k·A - R) = 0, over decoded points.
        let decoded: Vec<(Scalar, EdwardsPoint, EdwardsPoint, Scalar)> = items
            .iter()
            .map(|it| {
                let s = Scalar::from_canonical_bytes(it.sig[32..].try_into().unwrap()).unwrap();
                let r = CompressedEdwardsY(it.sig[..32].try_into().unwrap()).decompress().unwrap();
                let a = CompressedEdwardsY(it.pk.0).decompress().unwrap();
                let mut h = <sha2::Sha512 as sha2::Digest>::new();
                sha2::Digest::update(&mut h, &it.sig[..32]);
                sha2::Digest::update(&mut h, it.pk.0);
                sha2::Digest::update(&mut h, it.msg);
                (s, r, a, Scalar::from_hash(h))
            })
            .collect();
        b.run(&format!("  reference: bare batch equation, {n} (not exact)"), "per signature; no pre-checks", || {
            timed(|| {
                let zs: Vec<Scalar> = decoded.iter().map(|_| Scalar::from(rand::random::<u128>())).collect();
                let bc: Scalar = decoded.iter().zip(&zs).map(|((s, ..), z)| z * s).sum();
                let scalars = std::iter::once(bc)
                    .chain(zs.iter().map(|z| -z))
                    .chain(decoded.iter().zip(&zs).map(|((.., k), z)| -(z * k)));
                let points = std::iter::once(curve25519_dalek::constants::ED25519_BASEPOINT_POINT)
                    .chain(decoded.iter().map(|(_, r, ..)| *r))
                    .chain(decoded.iter().map(|(_, _, a, _)| *a));
                assert!(EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity());
                n as u64
            })
        });
        if n == 64 {
            b.run("  reference: prime-subgroup check of one R", "[l]R = 0, variable time", || {
                timed(|| {
                    for (_, r, ..) in &decoded {
                        let p = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-Scalar::ONE), r, &Scalar::ZERO);
                        assert!((p + r).is_identity());
                    }
                    n as u64
                })
            });
        }
    }
}

fn bench_validation(b: &mut Bench) {
    let key = Keypair::insecure_from_label("bench-owner");
    let from = Address::from_pubkey(Network::Testnet, &key.public());
    let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("bench-to").public());
    let fee = payment_fee(&key, &from, &to, CHAIN);
    // A view the size of a busy wallet's UTXO set, so lookups are not all cache hits.
    let mut view: HashMap<OutPoint, TxOut> = HashMap::new();
    for i in 0..10_000 {
        view.insert(fake_outpoint(i), TxOut { value: COIN, address: from });
    }
    let txs: Vec<Transaction> =
        (0..1000).map(|i| payment(&key, &from, &to, fake_outpoint(i), COIN, fee, CHAIN)).collect();
    // A node computes each payment's id about ten times (gossip, admission, blocks, store).
    b.run("Transaction::txid (1 in, 2 out)", "SHA-256d of the encoding", || {
        timed(|| {
            for tx in &txs {
                black_box(black_box(tx).txid());
            }
            txs.len() as u64
        })
    });
    b.run("check_transaction (1 in, 2 out, HashMap view)", "stateless + lookup + sig + fee", || {
        timed(|| {
            for tx in &txs {
                check_transaction(black_box(tx), &view, CHAIN, NET, 1).expect("valid");
            }
            txs.len() as u64
        })
    });

    // Ten inputs: the signature check runs once per input, so this shows the per-input cost.
    let ten: Vec<Transaction> = (0..100)
        .map(|i| {
            let ins: Vec<OutPoint> = (0..10).map(|j| fake_outpoint(1000 + i * 10 + j)).collect();
            let mut tx = Transaction::unsigned(ins, vec![TxOut { value: 9 * COIN, address: to }], 0, None);
            tx.sign_all(&key, CHAIN);
            tx
        })
        .collect();
    b.run("check_transaction (10 in, 1 out, HashMap view)", "10 signature checks each", || {
        timed(|| {
            for tx in &ten {
                check_transaction(black_box(tx), &view, CHAIN, NET, 1).expect("valid");
            }
            ten.len() as u64
        })
    });
}

fn bench_mempool(b: &mut Bench) {
    let key = Keypair::insecure_from_label("bench-owner");
    let from = Address::from_pubkey(Network::Testnet, &key.public());
    let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("bench-to").public());
    let fee = payment_fee(&key, &from, &to, CHAIN);
    const N: u64 = 2000;
    let mut chain: HashMap<OutPoint, TxOut> = HashMap::new();
    for i in 0..N {
        chain.insert(fake_outpoint(i), TxOut { value: COIN, address: from });
    }
    let txs: Vec<Transaction> = (0..N).map(|i| payment(&key, &from, &to, fake_outpoint(i), COIN, fee, CHAIN)).collect();
    b.run("Mempool::add (HashMap chain view, 2000 per pool)", "includes check_transaction", || {
        let batch = txs.clone();
        let mut pool = Mempool::new(DEFAULT_MAX_BYTES);
        timed(|| {
            for tx in batch {
                pool.add(tx, &chain, false, CHAIN, NET, 1, 0).expect("valid");
            }
            N
        })
    });
}

fn bench_snowball(b: &mut Bench) {
    const N: u64 = 1000;
    // Thresholds of a five-node network (k = n - 1 = 4), as the node computes them.
    let params = SnowballParams::default();
    let (k, ap, ac) = params.effective(4);
    let beta = params.beta;
    let txids: Vec<(Txid, OutPoint)> =
        (0..N).map(|i| (Hash256::tagged("bench-tx", &[&i.to_le_bytes()]), fake_outpoint(i))).collect();
    let fill = |s: &mut Snowball| {
        let now = Instant::now();
        for (t, op) in &txids {
            s.insert(*t, std::slice::from_ref(op), now);
        }
    };
    b.run("Snowball::insert (1000 distinct spends)", "per txid", || {
        let mut s = Snowball::new(params.clone());
        timed(|| {
            fill(&mut s);
            N
        })
    });

    // What a poll answer asks per txid: every node answers each payment about 32 times.
    let mut s = Snowball::new(params.clone());
    fill(&mut s);
    b.run("Snowball::preference (1000 undecided)", "per txid; a poll answer", || {
        timed(|| {
            for (t, _) in &txids {
                black_box(s.preference(black_box(t)));
            }
            N
        })
    });

    // The same at a loaded node's size, asked in no particular order: past the caches, each
    // look-up an answer makes is a likely cache miss.
    const LARGE: u64 = 50_000;
    let mut s = Snowball::new(params.clone());
    let now = Instant::now();
    let mut large: Vec<Txid> = (0..LARGE)
        .map(|i| {
            let t = Hash256::tagged("bench-tx", &[&i.to_le_bytes()]);
            s.insert(t, &[fake_outpoint(i)], now);
            t
        })
        .collect();
    rand::seq::SliceRandom::shuffle(large.as_mut_slice(), &mut rand::thread_rng());
    b.run("Snowball::preference (50000 undecided, random order)", "per txid; a poll answer", || {
        timed(|| {
            for t in &large {
                black_box(s.preference(black_box(t)));
            }
            LARGE
        })
    });

    // Steady state: votes that do not reach alpha keep all 1000 undecided, so every poll does
    // the full walk. batch() is included because the engine calls it before every poll.
    let no: Vec<(Txid, usize)> = txids.iter().map(|(t, _)| (*t, ap - 1)).collect();
    let mut s = Snowball::new(params.clone());
    fill(&mut s);
    b.run("Snowball batch+record_poll, 1000 undecided", "no decision; 1000 txid-votes per poll", || {
        timed(|| {
            for _ in 0..20 {
                black_box(s.batch(N as usize));
                assert!(s.record_poll(&no, k, ap, ac).is_empty());
            }
            20
        })
    });

    // The finalizing path: beta confident polls accept all 1000 (the last one settles them).
    let yes: Vec<(Txid, usize)> = txids.iter().map(|(t, _)| (*t, k)).collect();
    b.run(
        &format!("Snowball record_poll to finality (beta={beta}, 1000 tx)"),
        "per poll; fresh set each round",
        || {
            let mut s = Snowball::new(params.clone());
            fill(&mut s);
            timed(|| {
                let mut accepted = 0;
                for _ in 0..beta {
                    black_box(s.batch(N as usize));
                    accepted += s.record_poll(&yes, k, ap, ac).accepted.len();
                }
                assert_eq!(accepted as u64, N);
                beta as u64
            })
        },
    );
}

/// A chain of one devnet validator on a real redb file, with a FIFO of the validator wallet's
/// spendable outputs (each spend returns its change to the back of the queue).
struct Chain {
    g: GenesisConfig,
    store: Arc<Store>,
    ledger: Ledger,
    vkey: Keypair,
    wkey: Keypair,
    wallet: Address,
    to: Address,
    parent: Block,
    last_cert: Option<CommitCert>,
    coins: VecDeque<(OutPoint, u64)>,
    fee: u64,
}

/// Timings of one block through the node's path: build, check, commit.
struct BlockTimes {
    build: Duration,
    check: Duration,
    commit: Duration,
    /// This thread's CPU time in the commit (the rest of `commit` is mostly waiting for fsync).
    commit_cpu: Duration,
    bytes: usize,
}

impl Chain {
    fn open(dir: &std::path::Path) -> Chain {
        let g = GenesisConfig::devnet(1, 1);
        let store = Arc::new(Store::open(&dir.join("chain.redb"), &g).expect("open store"));
        let ledger = Ledger::new(store.clone(), g.clone());
        let wkey = devnet_wallet_key("validator1");
        let wallet = Address::from_pubkey(Network::Testnet, &wkey.public());
        let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("bench-recipient").public());
        let fee = payment_fee(&wkey, &wallet, &to, &g.chain_id);
        let genesis = g.genesis_block();
        let gtx = &genesis.txs[0];
        let gid = gtx.txid();
        let coins = gtx
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.address == wallet)
            .map(|(v, o)| (OutPoint { txid: gid, vout: v as u32 }, o.value))
            .collect();
        Chain {
            vkey: devnet_validator_key("validator1"),
            store,
            ledger,
            wkey,
            wallet,
            to,
            parent: genesis,
            last_cert: None,
            coins,
            fee,
            g,
        }
    }

    /// Signs the precommit certificate a one-validator network would produce.
    fn certify(&self, block: &Block) -> CommitCert {
        let hash = block.hash();
        let payload = vote_payload(VOTE_PRECOMMIT, block.height(), block.header.round, Some(&hash));
        let sig = self.vkey.sign(Domain::Vote, &self.g.chain_id, &payload);
        CommitCert { height: block.height(), round: block.header.round, block_hash: hash, votes: vec![(0, sig)] }
    }

    /// Builds, checks and commits the next block holding `txs`; every tx must make it in.
    fn extend(&mut self, txs: Vec<Transaction>) -> BlockTimes {
        let n = txs.len();
        // The slot's own start time keeps the header valid for check_block without a clock.
        let now = self.g.slot_start_ms(self.ledger.slot_after(&self.parent.header));
        let (block, build) = timed(|| {
            self.ledger
                .build_block(&self.parent, 0, 0, &self.vkey, txs, self.last_cert.clone(), now, &|_| false)
                .expect("build")
        });
        assert_eq!(block.txs.len(), n + 1, "build_block dropped a transaction");
        let (res, check) = timed(|| self.ledger.check_block(&block, &self.parent, None, &|_| false));
        res.expect("own block is valid");
        let cert = self.certify(&block);
        let cpu = thread_cpu();
        let (res, commit) = timed(|| self.store.commit_block(&block, &cert));
        let commit_cpu = thread_cpu() - cpu;
        res.expect("commit");
        let bytes = block.size();
        self.parent = block;
        self.last_cert = Some(cert);
        BlockTimes { build, check, commit, commit_cpu, bytes }
    }

    /// Fans genesis outputs out into `per` outputs each, growing the coin queue.
    fn fan_out(&mut self, inputs: usize, per: usize) {
        let mut txs = Vec::new();
        for _ in 0..inputs {
            let (op, value) = self.coins.pop_front().expect("a coin to split");
            txs.push(self.split(op, value, &vec![self.wallet; per]));
        }
        let created: Vec<(OutPoint, u64)> = txs
            .iter()
            .flat_map(|tx| {
                let id = tx.txid();
                tx.outputs.iter().enumerate().map(move |(v, o)| (OutPoint { txid: id, vout: v as u32 }, o.value))
            })
            .collect();
        self.extend(txs);
        self.coins.extend(created);
    }

    /// The wallet's coin `op` worth `value`, split evenly into one output per address of `to`,
    /// less the fee.
    fn split(&self, op: OutPoint, value: u64, to: &[Address]) -> Transaction {
        // Size is value-independent; measure it with a probe, then split what is left.
        let outs = |v: u64| to.iter().map(|&address| TxOut { value: v, address }).collect();
        let mut probe = Transaction::unsigned(vec![op], outs(1), 0, None);
        probe.sign_all(&self.wkey, &self.g.chain_id);
        let each = (value - min_fee(probe.size())) / to.len() as u64;
        let mut tx = Transaction::unsigned(vec![op], outs(each), 0, None);
        tx.sign_all(&self.wkey, &self.g.chain_id);
        tx
    }

    /// `n` signed payments from the front of the coin queue (not yet returned to it).
    fn payments(&mut self, n: usize) -> Vec<Transaction> {
        (0..n)
            .map(|_| {
                let (op, value) = self.coins.pop_front().expect("enough coins");
                payment(&self.wkey, &self.wallet, &self.to, op, value, self.fee, &self.g.chain_id)
            })
            .collect()
    }

    /// Puts the change outputs of committed payments back in the queue.
    fn recycle(&mut self, txs: &[Transaction]) {
        for tx in txs {
            self.coins.push_back((OutPoint { txid: tx.txid(), vout: 1 }, tx.outputs[1].value));
        }
    }
}

fn bench_storage(b: &mut Bench, dir: &std::path::Path) -> Chain {
    let mut c = Chain::open(dir);
    // 20 genesis outputs × 1000 = 20,000 coins, enough for any block size below.
    c.fan_out(c.coins.len(), 1000);
    println!("    (store at {}, {} spendable coins after fan-out)", dir.display(), c.coins.len());
    for size in [1usize, 100, 1000] {
        let (mut build, mut check, mut commit) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut blocks, mut bytes) = (0u64, 0usize);
        // At least a few blocks even for the slow sizes; otherwise ~target of commit time.
        while commit < b.target || blocks < 5 {
            let txs = c.payments(size);
            let t = c.extend(txs.clone());
            c.recycle(&txs);
            build += t.build;
            check += t.check;
            commit += t.commit;
            bytes = t.bytes;
            blocks += 1;
        }
        let txs = blocks * size as u64;
        let note =
            |d: Duration| format!("{:.0} tx/s; block {:.1} KB", txs as f64 / d.as_secs_f64(), bytes as f64 / 1024.0);
        b.push(&format!("Store::commit_block, {size} tx/block"), blocks, commit, &note(commit));
        b.push(&format!("Ledger::build_block, {size} tx/block"), blocks, build, &note(build));
        b.push(&format!("Ledger::check_block, {size} tx/block"), blocks, check, &note(check));
    }
    // The tip is now a 1000-tx block: eligible_after reads whole recent blocks for their
    // certificates' signers, so its cost grows with block size.
    let parent = c.parent.clone();
    b.run("Ledger::eligible_after (parent: 1000-tx blocks)", "called by build/check_block", || {
        timed(|| {
            black_box(c.ledger.eligible_after(&parent).expect("eligible"));
            1
        })
    });
    bench_proposal_check(b, &mut c);
    c
}

/// Block commits as `timectl bench` makes them: coins spread over many addresses, spent in random
/// order, by blocks of thousands of payments. The store's cost per entry depends on how many
/// pages a commit touches, which a one-address wallet (above) hides: its address-index entries
/// all sit together.
fn bench_store_spread(b: &mut Bench, dir: &std::path::Path) {
    const KEYS: usize = 2000;
    const COINS_PER_TX: usize = 1000;
    const FUNDING_TXS: usize = 160;
    const BLOCK_TXS: usize = 2500;
    let name = format!("Store::commit_block, {BLOCK_TXS} tx/block, {KEYS} addresses");
    // Its set-up (2,000 keys, 160,000 coins) is the slow part, so it is skipped whole.
    if Bench::skips(&name) {
        return;
    }
    let mut c = Chain::open(dir);
    let keys: Vec<(Keypair, Address)> = (0..KEYS)
        .map(|i| {
            let k = Keypair::insecure_from_label(&format!("spread-{i}"));
            let a = Address::from_pubkey(Network::Testnet, &k.public());
            (k, a)
        })
        .collect();
    c.fan_out(4, FUNDING_TXS / 4);
    // 160 funding transactions of 1,000 outputs each, key after key, committed 20 to a block.
    let mut coins: Vec<(OutPoint, u64, usize)> = Vec::new();
    let funding: Vec<Transaction> = (0..FUNDING_TXS)
        .map(|t| {
            let (op, value) = c.coins.pop_front().expect("a funding coin");
            let owners: Vec<usize> = (0..COINS_PER_TX).map(|o| (t * COINS_PER_TX + o) % KEYS).collect();
            let to: Vec<Address> = owners.iter().map(|&k| keys[k].1).collect();
            let tx = c.split(op, value, &to);
            let id = tx.txid();
            coins.extend(
                owners
                    .iter()
                    .zip(&tx.outputs)
                    .enumerate()
                    .map(|(v, (&k, o))| (OutPoint { txid: id, vout: v as u32 }, o.value, k)),
            );
            tx
        })
        .collect();
    for block in funding.chunks(20) {
        c.extend(block.to_vec());
    }
    // Spent in random order (xorshift, fixed seed), as the load generator's keys pick them.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..coins.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        coins.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut coins: VecDeque<_> = coins.into();
    let fee = payment_fee(&keys[0].0, &keys[0].1, &keys[1].1, &c.g.chain_id);
    // Eight blocks to bring every key range of the tables to the funding, then the measured ones.
    let (warm, measured) = (8, 16);
    let (mut commit, mut cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..warm + measured {
        let (txs, owners): (Vec<Transaction>, Vec<usize>) = (0..BLOCK_TXS)
            .map(|_| {
                let (op, value, k) = coins.pop_front().expect("enough coins");
                (payment(&keys[k].0, &keys[k].1, &keys[(k + 1) % KEYS].1, op, value, fee, &c.g.chain_id), k)
            })
            .unzip();
        let t = c.extend(txs.clone());
        if round >= warm {
            commit += t.commit;
            cpu += t.commit_cpu;
        }
        // The change goes back to its payer's coins.
        for (tx, k) in txs.iter().zip(owners) {
            coins.push_back((OutPoint { txid: tx.txid(), vout: 1 }, tx.outputs[1].value, k));
        }
    }
    let payments = (measured * BLOCK_TXS) as f64;
    let note = format!(
        "{:.1} µs per payment ({:.1} µs of CPU); {} coins",
        commit.as_secs_f64() * 1e6 / payments,
        cpu.as_secs_f64() * 1e6 / payments,
        FUNDING_TXS * COINS_PER_TX
    );
    b.push(&name, measured as u64, commit, &note);
}

/// check_block as the engine calls it for a proposal: with a finalized-conflict test that, like
/// `Engine::finalized_conflict`, scans every pooled entry for each input. The pool holds the
/// block's own transactions, finalized, as it does when a proposal arrives.
fn bench_proposal_check(b: &mut Bench, c: &mut Chain) {
    for size in [100usize, 1000] {
        let (mut plain, mut engine_like, mut blocks) = (Duration::ZERO, Duration::ZERO, 0u64);
        while engine_like < b.target || blocks < 3 {
            let txs = c.payments(size);
            let mut pool = Mempool::new(DEFAULT_MAX_BYTES);
            for tx in &txs {
                let (txid, _) =
                    pool.add(tx.clone(), c.store.as_ref(), false, &c.g.chain_id, NET, u64::MAX, 0).expect("valid");
                pool.mark_finalized(&txid, 1);
            }
            let conflict = |tx: &Transaction| {
                let txid = tx.txid();
                tx.inputs.iter().any(|i| {
                    pool.entries().any(|e| {
                        e.txid != txid
                            && matches!(e.status, TxStatus::Finalized { .. })
                            && e.tx.inputs.iter().any(|x| x.prevout == i.prevout)
                    })
                })
            };
            let now = c.g.slot_start_ms(c.ledger.slot_after(&c.parent.header));
            let block = c
                .ledger
                .build_block(&c.parent, 0, 0, &c.vkey, txs.clone(), c.last_cert.clone(), now, &|_| false)
                .unwrap();
            let (r, t) = timed(|| c.ledger.check_block(&block, &c.parent, None, &|_| false));
            r.expect("valid");
            plain += t;
            let (r, t) = timed(|| c.ledger.check_block(&block, &c.parent, None, &conflict));
            r.expect("valid");
            engine_like += t;
            let cert = c.certify(&block);
            c.store.commit_block(&block, &cert).expect("commit");
            c.parent = block;
            c.last_cert = Some(cert);
            c.recycle(&txs);
            blocks += 1;
        }
        b.push(&format!("check_block {size} tx, no conflict test"), blocks, plain, "same blocks as next row");
        b.push(
            &format!("check_block {size} tx, engine-style conflict scan"),
            blocks,
            engine_like,
            &format!("pool of {size} finalized"),
        );
    }
}

fn bench_store_reads(b: &mut Bench, c: &mut Chain) {
    let info = c.store.utxo_set_info().expect("utxo info");
    let count = info.count;
    b.run(&format!("Store::utxo_set_info ({count} UTXOs)"), "full scan + SHA-256", || {
        timed(|| {
            black_box(c.store.utxo_set_info().expect("utxo info"));
            1
        })
    });
    let ops: Vec<OutPoint> = c.coins.iter().take(1000).map(|(op, _)| *op).collect();
    b.run("Store::get_utxo (one read transaction each)", "the node's UtxoView", || {
        timed(|| {
            for op in &ops {
                assert!(c.store.get_utxo(op).expect("read").is_some());
            }
            ops.len() as u64
        })
    });
    let wallet = c.wallet;
    b.run("Store::utxos_for_address (wallet)", "what sendtoaddress reads first", || {
        timed(|| {
            black_box(c.store.utxos_for_address(&wallet).expect("read"));
            1
        })
    });
    println!("    (wallet holds {} outputs)", c.store.utxos_for_address(&wallet).expect("read").len());
    b.run("Store::utxos_for_address_oldest (wallet, first 2)", "what sendtoaddress reads now", || {
        timed(|| {
            let mut n = 0;
            c.store
                .utxos_for_address_oldest(&wallet, |_, out| {
                    black_box(out);
                    n += 1;
                    n == 2
                })
                .expect("read");
            1
        })
    });

    // The node checks new transactions against the store, not a HashMap.
    let txs = c.payments(2000);
    let chain_id = c.g.chain_id.clone();
    let store = c.store.clone();
    b.run("Mempool::add (redb Store chain view, 2000 per pool)", "as submit_tx does", || {
        let batch = txs.clone();
        let mut pool = Mempool::new(DEFAULT_MAX_BYTES);
        timed(|| {
            for tx in batch {
                pool.add(tx, store.as_ref(), false, &chain_id, NET, 1_000_000, 0).expect("valid");
            }
            txs.len() as u64
        })
    });

    // Every finalized transaction is made durable before it is reported final.
    let mut i = 0usize;
    b.run("Store::put_finalized (one durable write each)", "per finalized tx, engine path", || {
        timed(|| {
            for _ in 0..20 {
                c.store.put_finalized(&txs[i % txs.len()], i as u64).expect("write");
                i += 1;
            }
            20
        })
    });
}

fn main() {
    let secs: f64 = std::env::var("BENCH_LEDGER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let mut b = Bench { target: Duration::from_secs_f64(secs), rows: Vec::new() };
    // `cargo bench` passes `--bench` (and filters); this harness runs everything regardless.
    println!("timed ledger micro-benchmarks (about {secs} s per case)\n");
    println!("| {:<52} | {:>9} | {:>6} | {:>12} | {:>10} | note |", "benchmark", "ops", "secs", "ops/s", "µs/op");
    println!("|{:-<54}|{:->11}|{:->8}|{:->14}|{:->12}|------|", "", "", "", "", "");
    bench_crypto(&mut b);
    bench_batch_verify(&mut b);
    bench_validation(&mut b);
    bench_mempool(&mut b);
    bench_snowball(&mut b);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut chain = bench_storage(&mut b, tmp.path());
    bench_store_reads(&mut b, &mut chain);
    let spread = tempfile::tempdir().expect("temp dir");
    bench_store_spread(&mut b, spread.path());
    println!("\n{} cases.", b.rows.len());
}
