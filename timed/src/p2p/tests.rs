//! Transport tests over real TCP on 127.0.0.1. Every test (in every test process) uses its
//! own chain id, so nodes of tests running in parallel can never join each other's network,
//! and every test body is bounded by a timeout.

use super::ban::BanKey;
use super::message::{handshake_payload, ChainStatus, Hello, HelloAck, Message, PROTOCOL_VERSION};
use super::*;
use crate::chain::crypto::Domain;
use crate::chain::genesis::{devnet_validator_key, GenesisConfig};
use futures::{SinkExt, StreamExt};
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Longest wait for any single expected event.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(45), f).await.expect("test timed out");
}

/// A small devnet of its own.
struct Net {
    genesis: GenesisConfig,
    hash: Hash256,
}

impl Net {
    fn new(test: &str) -> Net {
        let mut genesis = GenesisConfig::devnet(4, 10);
        genesis.chain_id = format!("p2p-test-{test}-{}", std::process::id());
        let hash = genesis.genesis_hash();
        Net { genesis, hash }
    }

    fn validators(&self) -> Vec<(String, PublicKey)> {
        self.genesis.validators.iter().map(|v| (v.id.clone(), v.pubkey)).collect()
    }

    fn key(&self, idx: ValidatorIndex) -> Keypair {
        devnet_validator_key(&self.genesis.validators[idx as usize].id)
    }

    fn config(&self, idx: ValidatorIndex, seeds: &[SocketAddr]) -> P2pConfig {
        P2pConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            identity: self.key(idx),
            validator_index: idx,
            validator_id: self.genesis.validators[idx as usize].id.clone(),
            chain_id: self.genesis.chain_id.clone(),
            genesis_hash: self.hash,
            validators: self.validators(),
            user_agent: "p2p-test".into(),
        }
    }

    /// A Hello as validator `idx` would send it.
    fn hello(&self, idx: ValidatorIndex, pubkey: PublicKey, listen_port: u16) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            chain_id: self.genesis.chain_id.clone(),
            genesis_hash: self.hash,
            validator_index: idx,
            validator_id: format!("validator{}", idx + 1),
            pubkey,
            nonce: rand::random(),
            listen_port,
            best_height: 0,
            user_agent: "raw".into(),
        }
    }
}

fn fast() -> Tuning {
    Tuning {
        handshake_timeout: Duration::from_secs(2),
        ping_interval: Duration::from_millis(200),
        peer_exchange_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        ..Tuning::default()
    }
}

struct Node {
    p2p: P2p,
    rx: mpsc::Receiver<Inbound>,
    _height: watch::Sender<u64>,
}

impl Node {
    async fn start(cfg: P2pConfig, tuning: Tuning, height: u64) -> Node {
        let (tx, height_rx) = watch::channel(height);
        let (p2p, rx) = P2p::start_tuned(cfg, tuning, height_rx).await.expect("p2p starts");
        Node { p2p, rx, _height: tx }
    }

    fn addr(&self) -> SocketAddr {
        self.p2p.local_addr()
    }

    async fn event(&mut self) -> Inbound {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("no event in time").expect("channel open")
    }

    /// Waits for `Connected { peer }`, skipping anything else; returns its best height.
    async fn connected_to(&mut self, peer: ValidatorIndex) -> u64 {
        loop {
            if let Inbound::Connected { peer: p, best_height } = self.event().await {
                if p == peer {
                    return best_height;
                }
            }
        }
    }

    async fn disconnected_from(&mut self, peer: ValidatorIndex) {
        loop {
            if let Inbound::Disconnected { peer: p } = self.event().await {
                if p == peer {
                    return;
                }
            }
        }
    }

    async fn message_from(&mut self, from: ValidatorIndex) -> Message {
        loop {
            if let Inbound::Message { from: f, msg } = self.event().await {
                if f == from {
                    return msg;
                }
            }
        }
    }

    /// Everything delivered so far, without waiting.
    fn drain(&mut self) -> Vec<Inbound> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }

    fn banned(&self) -> Vec<BanKey> {
        self.p2p.inner.state().bans.banned_keys(Instant::now())
    }
}

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-driven peer, to do what a well-behaved node never would.
struct Raw {
    r: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    w: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Raw { r: FramedRead::new(r, LengthDelimitedCodec::new()), w: FramedWrite::new(w, LengthDelimitedCodec::new()) }
    }

    async fn send(&mut self, m: &Message) {
        self.w.send(Bytes::from(m.encode())).await.unwrap();
    }

    /// The next frame, or `None` once the node closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.r.next()).await.expect("node went silent") {
            Some(Ok(f)) => Some(Message::decode(&f).expect("node sends valid frames")),
            _ => None,
        }
    }

    /// Whether the node closes the connection (reading and ignoring frames meanwhile).
    async fn closed_by_node(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.r.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Runs the handshake as `hello` signed by `key`; also returns the node's hello if the
    /// node got as far as acking ours (it does so before checking our ack).
    async fn handshake(addr: SocketAddr, net: &Net, hello: Hello, key: &Keypair) -> (Raw, Option<Hello>) {
        let mut raw = Raw::connect(addr).await;
        let mine = hello.pubkey;
        raw.send(&Message::Hello(Box::new(hello))).await;
        let Some(Message::Hello(theirs)) = raw.recv().await else { panic!("node did not say hello") };
        let sig = key.sign(
            Domain::Handshake,
            &net.genesis.chain_id,
            &handshake_payload(&theirs.nonce, &mine, &theirs.pubkey),
        );
        // The node may already have hung up on us; the write error then is expected.
        let _ = raw.w.send(Bytes::from(Message::HelloAck(HelloAck { signature: sig }).encode())).await;
        match tokio::time::timeout(WAIT, raw.r.next()).await.expect("node went silent") {
            Some(Ok(f)) if matches!(Message::decode(&f), Ok(Message::HelloAck(_))) => (raw, Some(*theirs)),
            _ => (raw, None),
        }
    }
}

/// A port nobody else gets while this listener lives (and that never answers a handshake),
/// for raw peers to announce as their listen port.
async fn parked_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[tokio::test]
async fn handshake_and_delivery_both_ways() {
    bounded(async {
        let net = Net::new("deliver");
        let mut a = Node::start(net.config(0, &[]), fast(), 7).await;
        let mut b = Node::start(net.config(1, &[a.addr()]), fast(), 3).await;
        assert_eq!(b.connected_to(0).await, 7, "best height from the hello");
        assert_eq!(a.connected_to(1).await, 3);
        assert_eq!(a.p2p.connected(), vec![1]);

        let status = Message::Status(ChainStatus { height: 9, tip: Hash256::digest(b"tip") });
        assert!(a.p2p.send(1, status.clone()));
        assert_eq!(b.message_from(0).await, status);
        b.p2p.broadcast(Message::GetBlocks { from: 1, to: 5 });
        assert_eq!(a.message_from(1).await, Message::GetBlocks { from: 1, to: 5 });
        b.p2p.broadcast_except(Message::GetBlocks { from: 2, to: 2 }, 0);
        assert!(!a.p2p.send(3, Message::GetBlocks { from: 1, to: 1 }), "validator 3 is not connected");

        // Status heights show up in peer info; pings measure a round trip.
        until("status height and ping time", || {
            let info = b.p2p.peer_info();
            info.len() == 1 && info[0].best_height == 9 && info[0].pingtime.is_some()
        })
        .await;
        // Several ping and peer exchange rounds later, still nothing but what was sent: the
        // transport's own messages stay inside.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let extra: Vec<Inbound> = a.drain().into_iter().chain(b.drain()).collect();
        assert!(extra.is_empty(), "unexpected events {extra:?}");
        assert_eq!(a.p2p.peer_info()[0].validator_id, "validator2");
        assert_eq!(b.p2p.peer_info()[0].listen_addr, a.addr().to_string());
    })
    .await;
}

#[tokio::test]
async fn peer_exchange_completes_the_mesh() {
    bounded(async {
        let net = Net::new("pex");
        let b = Node::start(net.config(1, &[]), fast(), 0).await;
        let a = Node::start(net.config(0, &[b.addr()]), fast(), 0).await;
        let c = Node::start(net.config(2, &[b.addr()]), fast(), 0).await;
        until("everyone connected to everyone", || {
            a.p2p.connected() == vec![1, 2] && b.p2p.connected() == vec![0, 2] && c.p2p.connected() == vec![0, 1]
        })
        .await;
        assert!(a.p2p.known_addresses() >= 2);
    })
    .await;
}

#[tokio::test]
async fn wrong_genesis_is_refused_then_banned() {
    bounded(async {
        let net = Net::new("genesis");
        let ban = Duration::from_secs(4);
        let mut a = Node::start(net.config(0, &[]), Tuning { ban_duration: ban, ..fast() }, 0).await;
        let mut other = net.config(1, &[a.addr()]);
        other.genesis_hash = Hash256::digest(b"another genesis");
        let mut x = Node::start(other, fast(), 0).await;
        let x_addr = x.addr();
        let x_key = BanKey::Node { pubkey: Some(net.key(1).public()), listen: x_addr };
        // x keeps redialling with backoff; its third refusal bans it.
        until("x banned", || a.banned().contains(&x_key)).await;
        x.p2p.shutdown();
        assert!(a.drain().is_empty(), "nothing from x reached the application");
        assert!(x.drain().is_empty());

        // The ban holds for x's key at x's address, even with a valid handshake...
        let (mut raw, ok) =
            Raw::handshake(a.addr(), &net, net.hello(1, net.key(1).public(), x_addr.port()), &net.key(1)).await;
        assert!(ok.is_none() && raw.closed_by_node().await);
        // ...and is not dialled while it lasts...
        a.p2p.add_address(&x_addr.to_string());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(a.p2p.inner.state().book.failures(&x_addr.to_string()), Some(0), "banned address dialled");
        // ...but does not touch the same validator announcing another address (loopback is
        // not banned by IP).
        let (_parked, port) = parked_port().await;
        let (raw, ok) = Raw::handshake(a.addr(), &net, net.hello(1, net.key(1).public(), port), &net.key(1)).await;
        assert!(ok.is_some());
        a.connected_to(1).await;
        drop(raw);
        a.disconnected_from(1).await;

        // Once the ban expires the address is dialled again (and fails: x is gone).
        until("ban expired and x redialled", || {
            !a.banned().contains(&x_key) && a.p2p.inner.state().book.failures(&x_addr.to_string()) > Some(0)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn key_not_matching_claimed_index_is_refused() {
    bounded(async {
        let net = Net::new("impostor");
        let mut a = Node::start(net.config(0, &[]), fast(), 0).await;
        // A node that believes validator 1's key is its own.
        let impostor = Keypair::insecure_from_label("impostor");
        let mut cfg = net.config(1, &[a.addr()]);
        cfg.identity = impostor.clone();
        cfg.validators[1].1 = impostor.public();
        let mut y = Node::start(cfg, fast(), 0).await;
        let y_key = BanKey::Node { pubkey: Some(impostor.public()), listen: y.addr() };
        until("impostor banned", || a.banned().contains(&y_key)).await;
        y.p2p.shutdown();
        assert!(a.drain().is_empty());
        assert!(y.drain().is_empty());

        // Hand-made variants: someone else's key, an index outside the genesis.
        let (_parked, port) = parked_port().await;
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, net.hello(2, net.key(3).public(), port), &net.key(3)).await;
        assert!(ok.is_none() && raw.closed_by_node().await);
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, net.hello(99, impostor.public(), port), &impostor).await;
        assert!(ok.is_none() && raw.closed_by_node().await);
        assert!(a.drain().is_empty());
        assert!(a.p2p.connected().is_empty());
    })
    .await;
}

#[tokio::test]
async fn bad_signature_and_wrong_first_message_are_refused() {
    bounded(async {
        let net = Net::new("badsig");
        let mut a = Node::start(net.config(0, &[]), fast(), 0).await;
        let (_parked, port) = parked_port().await;

        // Right key claimed, but the ack is signed by another key. (The node acks our hello
        // before it checks our ack, so only the hang-up tells.)
        let wrong = Keypair::insecure_from_label("wrong");
        let (mut raw, _) = Raw::handshake(a.addr(), &net, net.hello(2, net.key(2).public(), port), &wrong).await;
        assert!(raw.closed_by_node().await);

        // Not a hello first.
        let mut raw = Raw::connect(a.addr()).await;
        raw.send(&Message::Ping(1)).await;
        assert!(raw.closed_by_node().await);

        // Another chain, another genesis.
        let mut hello = net.hello(2, net.key(2).public(), port);
        hello.chain_id = "elsewhere".into();
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, hello, &net.key(2)).await;
        assert!(ok.is_none() && raw.closed_by_node().await);
        let mut hello = net.hello(2, net.key(2).public(), port);
        hello.genesis_hash = Hash256::digest(b"elsewhere");
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, hello, &net.key(2)).await;
        assert!(ok.is_none() && raw.closed_by_node().await);

        // Three offences by whoever claims validator 2 at that address (the wrong first
        // message could not be pinned on anyone: loopback is not banned by IP): banned, so
        // even a flawless handshake from there is refused now.
        assert!(a.banned().contains(&BanKey::Node {
            pubkey: Some(net.key(2).public()),
            listen: SocketAddr::new([127, 0, 0, 1].into(), port),
        }));
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, net.hello(2, net.key(2).public(), port), &net.key(2)).await;
        assert!(ok.is_none() && raw.closed_by_node().await);
        assert!(a.drain().is_empty());
    })
    .await;
}

#[tokio::test]
async fn garbage_and_oversized_frames_disconnect() {
    bounded(async {
        let net = Net::new("garbage");
        let mut a = Node::start(net.config(0, &[]), fast(), 0).await;

        async fn hung_up(mut s: TcpStream) -> bool {
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => {}
                }
            }
        }

        // A well-framed frame that is not a message.
        let mut s = TcpStream::connect(a.addr()).await.unwrap();
        s.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x01]).await.unwrap();
        assert!(hung_up(s).await);

        // A length prefix far over the frame limit.
        let mut s = TcpStream::connect(a.addr()).await.unwrap();
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
        assert!(hung_up(s).await);

        // Garbage after a good handshake: connected, then dropped.
        let (_parked, port) = parked_port().await;
        let (mut raw, ok) = Raw::handshake(a.addr(), &net, net.hello(1, net.key(1).public(), port), &net.key(1)).await;
        assert!(ok.is_some());
        a.connected_to(1).await;
        raw.w.send(Bytes::from_static(&[9, 9, 9])).await.unwrap();
        assert!(raw.closed_by_node().await);
        a.disconnected_from(1).await;
        assert!(a.p2p.connected().is_empty());
    })
    .await;
}

#[tokio::test]
async fn simultaneous_dial_keeps_one_connection() {
    bounded(async {
        let net = Net::new("simultaneous");
        for _ in 0..3 {
            let mut a = Node::start(net.config(0, &[]), fast(), 0).await;
            let mut b = Node::start(net.config(1, &[]), fast(), 0).await;
            a.p2p.add_address(&b.addr().to_string());
            b.p2p.add_address(&a.addr().to_string());
            until("connected", || a.p2p.connected() == vec![1] && b.p2p.connected() == vec![0]).await;
            // Let any duplicate finish its handshake and be resolved.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let (ia, ib) = (a.p2p.peer_info(), b.p2p.peer_info());
            assert_eq!((ia.len(), ib.len()), (1, 1));
            // Both kept the same socket: the one validator 0 dialled.
            assert!(!ia[0].inbound && ib[0].inbound);
            let a_local = a.p2p.inner.state().peers[&1].stats.local;
            assert_eq!(ib[0].addr, a_local.to_string());
            // The application saw one more Connected than Disconnected on each side.
            for n in [&mut a, &mut b] {
                let balance: i32 = n
                    .drain()
                    .iter()
                    .map(|e| match e {
                        Inbound::Connected { .. } => 1,
                        Inbound::Disconnected { .. } => -1,
                        Inbound::Message { .. } => 0,
                    })
                    .sum();
                assert_eq!(balance, 1);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn peer_info_counts_bytes() {
    bounded(async {
        let net = Net::new("bytes");
        // Default timings: after the first ping and peer exchange the link goes quiet.
        let mut a = Node::start(net.config(0, &[]), Tuning::default(), 0).await;
        let mut b = Node::start(net.config(1, &[a.addr()]), Tuning::default(), 0).await;
        a.connected_to(1).await;
        b.connected_to(0).await;
        for h in 0..20 {
            a.p2p.send(1, Message::Status(ChainStatus { height: h, tip: Hash256::ZERO }));
        }
        for _ in 0..20 {
            b.message_from(0).await;
        }
        until("both ends agree on the byte counts", || {
            let (ia, ib) = (a.p2p.peer_info(), b.p2p.peer_info());
            ia.len() == 1
                && ib.len() == 1
                && ia[0].bytessent == ib[0].bytesrecv
                && ia[0].bytesrecv == ib[0].bytessent
                && ia[0].pingtime.is_some()
        })
        .await;
        let ia = &a.p2p.peer_info()[0];
        // 20 status frames alone are 20 * (4 + 4 + 8 + 32) bytes.
        assert!(ia.bytessent > 20 * 48, "sent {}", ia.bytessent);
        assert!(ia.bytesrecv > 0);
        assert!(a.p2p.bytes_sent() >= ia.bytessent && a.p2p.bytes_received() >= ia.bytesrecv);
        assert!(ia.inbound && ia.conntime > 0 && ia.version == PROTOCOL_VERSION);
        assert_eq!(ia.best_height, 0);
        assert_eq!(b.p2p.peer_info()[0].best_height, 19);
    })
    .await;
}

#[tokio::test]
async fn silent_peer_is_dropped_after_missed_pongs() {
    bounded(async {
        let net = Net::new("silent");
        let tuning = Tuning { ping_interval: Duration::from_millis(100), ..fast() };
        let mut a = Node::start(net.config(0, &[]), tuning, 0).await;
        let (_parked, port) = parked_port().await;
        let (_raw, ok) = Raw::handshake(a.addr(), &net, net.hello(1, net.key(1).public(), port), &net.key(1)).await;
        assert!(ok.is_some());
        a.connected_to(1).await;
        let t = Instant::now();
        // The raw peer never answers pings.
        a.disconnected_from(1).await;
        assert!(t.elapsed() >= Duration::from_millis(250), "dropped too early: {:?}", t.elapsed());
    })
    .await;
}

#[tokio::test]
async fn slow_peer_is_disconnected_when_its_queue_fills() {
    bounded(async {
        let net = Net::new("slow");
        let mut a = Node::start(net.config(0, &[]), Tuning { send_queue: 4, ..fast() }, 0).await;
        let (_parked, port) = parked_port().await;
        let (_raw, ok) = Raw::handshake(a.addr(), &net, net.hello(1, net.key(1).public(), port), &net.key(1)).await;
        assert!(ok.is_some());
        a.connected_to(1).await;
        // Nothing yields between these sends, so the writer cannot drain: the queue fills.
        let accepted = (0..10).filter(|h| a.p2p.send(1, Message::GetBlocks { from: *h, to: *h })).count();
        assert!(accepted <= 4, "{accepted} frames queued");
        a.disconnected_from(1).await;
        assert!(!a.p2p.send(1, Message::GetPeers));
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_everything_and_a_dropped_receiver_is_fine() {
    bounded(async {
        let net = Net::new("shutdown");
        let mut a = Node::start(net.config(0, &[]), fast(), 0).await;
        let mut b = Node::start(net.config(1, &[a.addr()]), fast(), 0).await;
        a.connected_to(1).await;
        b.connected_to(0).await;
        // Nobody listens to a's events any more; traffic to it must not break anything.
        let Node { p2p: a, rx, _height } = a;
        drop(rx);
        for h in 0..50 {
            b.p2p.send(0, Message::Status(ChainStatus { height: h, tip: Hash256::ZERO }));
        }
        until("a still connected and reading", || a.peer_info().first().is_some_and(|p| p.best_height == 49)).await;

        let addr = a.local_addr();
        a.shutdown();
        b.disconnected_from(0).await;
        until("a empty", || a.connected().is_empty()).await;
        // The listener is gone: connecting fails or is closed at once.
        if let Ok(s) = TcpStream::connect(addr).await {
            let mut s = s;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("socket left open");
            assert!(matches!(n, Ok(0) | Err(_)));
        }
        // b keeps trying with backoff and never reconnects.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.p2p.connected().is_empty());
    })
    .await;
}

#[tokio::test]
async fn unreachable_seed_is_retried_with_backoff() {
    bounded(async {
        let net = Net::new("unreachable");
        // A port that refuses connections.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let a = Node::start(net.config(0, &[dead]), Tuning::default(), 0).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // 125-250 ms, then doubling: at most 5 attempts fit in 2.5 s, at least 2 happen.
        let failures = a.p2p.inner.state().book.failures(&dead.to_string()).unwrap();
        assert!((2..=5).contains(&failures), "{failures} attempts");
        assert_eq!(a.p2p.known_addresses(), 1);
    })
    .await;
}

#[test]
fn start_checks_identity() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let net = Net::new("identity");
    let mut cfg = net.config(0, &[]);
    cfg.identity = net.key(1);
    let err = rt.block_on(P2p::start(cfg, watch::channel(0).1)).err().unwrap();
    assert!(matches!(err, P2pError::IdentityMismatch(0)));
    let cfg = P2pConfig { validator_index: 9, ..net.config(0, &[]) };
    let err = rt.block_on(P2p::start(cfg, watch::channel(0).1)).err().unwrap();
    assert!(matches!(err, P2pError::UnknownIndex { index: 9, count: 4 }));
}

/// Answers Yes to txids whose first byte is even, No otherwise, and counts its calls.
struct EvenAnswerer(std::sync::atomic::AtomicUsize);

impl PollAnswerer for EvenAnswerer {
    fn answer(
        &self,
        _from: ValidatorIndex,
        txids: &[crate::chain::Txid],
    ) -> Vec<crate::consensus::messages::Preference> {
        use crate::consensus::messages::Preference;
        self.0.fetch_add(1, Ordering::SeqCst);
        txids.iter().map(|t| if t.0[0] % 2 == 0 { Preference::Yes } else { Preference::No }).collect()
    }
}

#[tokio::test]
async fn polls_are_answered_in_the_reader_when_an_answerer_is_set() {
    use crate::consensus::messages::Preference;
    bounded(async {
        let net = Net::new("answerer");
        let mut a = Node::start(net.config(0, &[]), fast(), 0).await;
        let mut b = Node::start(net.config(1, &[a.addr()]), fast(), 0).await;
        b.connected_to(0).await;
        a.connected_to(1).await;
        let txid = |n: u8| Hash256([n; 32]);
        let query = Message::PollQuery { id: 1, txids: vec![txid(2), txid(3)] };

        // Without an answerer the query goes to the application, as before.
        assert!(a.p2p.send(1, query.clone()));
        assert_eq!(b.message_from(0).await, query);

        // With one, the reader answers and the application never sees the query.
        let answerer = Arc::new(EvenAnswerer(Default::default()));
        b.p2p.set_poll_answerer(answerer.clone());
        assert!(a.p2p.send(1, Message::PollQuery { id: 2, txids: vec![txid(2), txid(3)] }));
        assert_eq!(a.message_from(1).await, Message::PollReply { id: 2, prefs: vec![Preference::Yes, Preference::No] });
        assert_eq!(answerer.0.load(Ordering::SeqCst), 1);
        // An oversized query gets no answer at all, as from the engine.
        let too_many = vec![txid(2); crate::consensus::messages::MAX_POLL_TXIDS + 1];
        assert!(a.p2p.send(1, Message::PollQuery { id: 3, txids: too_many }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(answerer.0.load(Ordering::SeqCst), 1);
        let seen: Vec<Inbound> = a.drain().into_iter().chain(b.drain()).collect();
        assert!(
            !seen.iter().any(|e| matches!(
                e,
                Inbound::Message { msg: Message::PollQuery { .. } | Message::PollReply { .. }, .. }
            )),
            "unexpected events {seen:?}"
        );
    })
    .await;
}
