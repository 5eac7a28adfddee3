//! Userspace netem for hosts on this machine (rehearsal), for kernels without `sch_netem`.
//!
//! An iptables rule in the host's network namespace sends the packets the node's P2P port
//! sends (`OUTPUT`, source or destination port) to an NFQUEUE; a thread of this process, moved
//! into that namespace with `setns`, reads the queue and gives each packet its verdict after
//! the delay ± jitter, or drops it with the loss probability. Like `tc netem` on a link's root
//! qdisc it slows what the host sends, so a round trip to it grows by the delay.
//!
//! The rule carries `--queue-bypass`: if the reader is gone (this process killed), the kernel
//! lets packets through instead of holding them, so a crash never blackholes a host. The
//! reader stops when its [`Shaper`] is stopped or dropped; whatever it still holds is passed on.

use crate::chaos::Netem;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Comment on our iptables rules, so a heal deletes exactly those.
pub const RULE_COMMENT: &str = "timectl-netem";
/// The queue the rule feeds. Queues are per network namespace, and a host has at most one
/// latency perturbation at a time.
pub const QUEUE_NUM: u16 = 2130;
/// Packets the kernel holds for us before it lets more pass unqueued (`fail-open`).
const QUEUE_MAX_LEN: u32 = 8192;
/// How often the reader looks at the queue and at its stop flag when nothing is due sooner.
const POLL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    #[error("cannot enter the network namespace {netns}: {source}")]
    Netns { netns: String, source: std::io::Error },
    #[error("netfilter queue {queue} in {netns}: {what}: {source}")]
    Queue { netns: String, queue: u16, what: &'static str, source: std::io::Error },
    #[error("the queue reader for {netns} stopped before it was ready")]
    ReaderGone { netns: String },
}

/// What a reader did, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub dropped: u64,
    /// Most packets held at once.
    pub max_held: usize,
}

/// A running queue reader; [`stop`](Shaper::stop) (or drop) ends it.
pub struct Shaper {
    netns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Stats>>,
}

/// The iptables arguments (after `-I`/`-D`) of the rule that queues a node's P2P traffic.
pub fn rule_args(p2p_port: u16) -> String {
    format!(
        "OUTPUT -p tcp -m multiport --ports {p2p_port} -m comment --comment {RULE_COMMENT} \
         -j NFQUEUE --queue-num {QUEUE_NUM} --queue-bypass"
    )
}

/// Shell script that adds the rule (the reader must be running first).
pub fn add_rule_script(p2p_port: u16) -> String {
    format!(
        "command -v iptables >/dev/null 2>&1 || {{ echo 'iptables is not installed on this host' >&2; exit 3; }}; \
         iptables -w -I {}",
        rule_args(p2p_port)
    )
}

/// Shell script that deletes every rule with our comment; harmless when there is none.
pub fn remove_rule_script() -> String {
    format!(
        "if command -v iptables >/dev/null 2>&1; then \
           iptables -w -S OUTPUT | grep -- '--comment {RULE_COMMENT} ' | sed 's/^-A/-D/' | \
             while read -r rule; do eval iptables -w $rule; done; \
         fi"
    )
}

impl Shaper {
    /// Starts a reader of [`QUEUE_NUM`] in the named network namespace (`/run/netns/NAME`);
    /// returns once it is bound, so the rule can be added.
    pub fn start(netns: &str, netem: Netem, seed: u64) -> Result<Shaper, NetemError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = netns.to_string();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("netem-{netns}"))
            .spawn(move || {
                let queue = match open_in(&name) {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Stats::default();
                    }
                };
                serve(queue, netem, seed, &flag)
            })
            .map_err(|e| NetemError::Netns { netns: netns.into(), source: e })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Shaper { netns: netns.into(), stop, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(NetemError::ReaderGone { netns: netns.into() }),
        }
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Stops the reader; packets it still holds are let through at once.
    pub fn stop(mut self) -> Stats {
        self.finish()
    }

    fn finish(&mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.finish();
    }
}

/// On the reader's own thread: enter the namespace (setns changes only the calling thread),
/// then open and bind the queue there.
fn open_in(netns: &str) -> Result<nfq::Queue, NetemError> {
    let ns_err = |source| NetemError::Netns { netns: netns.into(), source };
    let file = std::fs::File::open(std::path::Path::new("/run/netns").join(netns)).map_err(ns_err)?;
    // SAFETY: a valid descriptor of a network namespace file; affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ns_err(std::io::Error::last_os_error()));
    }
    let q_err = |what| move |source| NetemError::Queue { netns: netns.into(), queue: QUEUE_NUM, what, source };
    let mut q = nfq::Queue::open().map_err(q_err("open"))?;
    q.bind(QUEUE_NUM).map_err(q_err("bind (is another reader bound to it?)"))?;
    // Verdicts only: the payload is never looked at, so none is copied.
    q.set_copy_range(QUEUE_NUM, 0).map_err(q_err("copy range"))?;
    // Whole GSO super-packets rather than their segments: fewer verdicts, same bytes.
    q.set_recv_gso(QUEUE_NUM, true).map_err(q_err("gso"))?;
    q.set_queue_max_len(QUEUE_NUM, QUEUE_MAX_LEN).map_err(q_err("queue length"))?;
    // A full queue lets packets pass rather than dropping them: loss is only what we choose.
    q.set_fail_open(QUEUE_NUM, true).map_err(q_err("fail-open"))?;
    q.set_nonblocking(true);
    Ok(q)
}

/// When a packet that arrived at `now` goes out: after delay ± jitter, but never before the
/// one queued ahead of it, so a TCP stream is slowed, not reordered.
fn release_at(now: Instant, netem: Netem, last: Option<Instant>, rng: &mut impl Rng) -> Instant {
    let jitter = netem.jitter_ms.min(netem.delay_ms) as i64;
    let ms = netem.delay_ms as i64 + if jitter > 0 { rng.gen_range(-jitter..=jitter) } else { 0 };
    let at = now + Duration::from_millis(ms.max(0) as u64);
    last.map_or(at, |l| at.max(l))
}

fn serve(mut q: nfq::Queue, netem: Netem, seed: u64, stop: &AtomicBool) -> Stats {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut stats = Stats::default();
    while !stop.load(Ordering::SeqCst) {
        // Everything the kernel has for us now.
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    stats.packets += 1;
                    if rng.gen_range(0..1000) < netem.loss_permille {
                        stats.dropped += 1;
                        msg.set_verdict(nfq::Verdict::Drop);
                        let _ = q.verdict(msg);
                    } else {
                        let at = release_at(Instant::now(), netem, held.back().map(|(t, _)| *t), &mut rng);
                        msg.set_verdict(nfq::Verdict::Accept);
                        held.push_back((at, msg));
                        stats.max_held = stats.max_held.max(held.len());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The socket broke: the rule's --queue-bypass lets traffic through now.
                    tracing::warn!("netem queue reader: {e}; packets pass unshaped until the heal");
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t <= now) {
            let (_, msg) = held.pop_front().expect("front checked");
            let _ = q.verdict(msg);
        }
        std::thread::sleep(held.front().map_or(POLL, |(t, _)| t.saturating_duration_since(now).min(POLL)));
    }
    for (_, msg) in held.drain(..) {
        let _ = q.verdict(msg);
    }
    let _ = q.unbind(QUEUE_NUM);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_times_keep_order_and_stay_in_the_band() {
        let netem = Netem { delay_ms: 100, jitter_ms: 25, loss_permille: 0 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut last = None;
        let mut seen_low = false;
        for i in 0..500u64 {
            let now = start + Duration::from_millis(i);
            let at = release_at(now, netem, last, &mut rng);
            let d = at.duration_since(now).as_millis() as u64;
            assert!((75..=125 + 50).contains(&d), "packet {i} held {d} ms");
            if let Some(l) = last {
                assert!(at >= l, "packet {i} would overtake the one before it");
            }
            seen_low |= d < 90;
            last = Some(at);
        }
        assert!(seen_low, "jitter never shortened a delay");
        // No jitter: exactly the delay.
        let fixed = Netem { jitter_ms: 0, ..netem };
        assert_eq!(release_at(start, fixed, None, &mut rng), start + Duration::from_millis(100));
    }

    #[test]
    fn rules_are_found_by_their_comment() {
        let add = add_rule_script(9000);
        assert!(
            add.contains(
                "iptables -w -I OUTPUT -p tcp -m multiport --ports 9000 -m comment --comment timectl-netem \
                 -j NFQUEUE --queue-num 2130 --queue-bypass"
            ),
            "{add}"
        );
        let rm = remove_rule_script();
        assert!(rm.contains("grep -- '--comment timectl-netem '") && rm.contains("sed 's/^-A/-D/'"), "{rm}");
    }

    #[test]
    fn a_missing_namespace_is_a_clear_error() {
        let netem = Netem { delay_ms: 10, jitter_ms: 0, loss_permille: 0 };
        let e = Shaper::start("timectl-no-such-netns", netem, 1).err().expect("no such namespace");
        assert!(e.to_string().contains("cannot enter the network namespace timectl-no-such-netns"), "{e}");
    }
}
