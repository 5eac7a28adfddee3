//! Admission of inbound connections before they have proven who they are.
//!
//! Only genesis validators can complete a handshake, so strangers can never hold an
//! established slot; what they can hold is a pending handshake. Pending inbound handshakes are
//! therefore limited on their own (outbound dials never share their budget), per source IP
//! (non-loopback: on loopback every test node shares one address), and in time. When the
//! limit is reached, the oldest stranger is closed for the newcomer, so a flood of idle
//! sockets churns among itself while a real validator, which sends its Hello at once, gets
//! through. A connection whose Hello names a genesis validator with that validator's key moves
//! to that validator's reserved slot, which strangers cannot take; one such claim per
//! validator is pending at a time.

use crate::chain::block::ValidatorIndex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

struct Entry {
    ip: IpAddr,
    started: Instant,
    kill: CancellationToken,
    /// The genesis validator this connection claims to be, once its Hello was read.
    claim: Option<ValidatorIndex>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    claimed: HashMap<ValidatorIndex, u64>,
    next: u64,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Denied {
    PerIp,
}

pub(super) struct Admission {
    max_pending: usize,
    max_per_ip: usize,
    table: Mutex<Table>,
}

/// A pending inbound handshake; dropping it frees the slot.
pub(super) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    kill: CancellationToken,
}

impl Admission {
    pub(super) fn new(max_pending: usize, max_per_ip: usize) -> Self {
        Admission { max_pending: max_pending.max(1), max_per_ip: max_per_ip.max(1), table: Mutex::default() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new inbound connection from `ip`. Returns the ticket and whether a stranger
    /// was evicted to make room.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<(Ticket, bool), Denied> {
        let mut t = self.table();
        let from_ip = t.per_ip.get(&ip).copied().unwrap_or(0);
        if !ip.is_loopback() && from_ip >= self.max_per_ip {
            return Err(Denied::PerIp);
        }
        let mut evicted = false;
        if t.entries.len() >= self.max_pending {
            let oldest = t.entries.iter().filter(|(_, e)| e.claim.is_none()).min_by_key(|(_, e)| e.started);
            if let Some((&id, _)) = oldest {
                let e = t.remove(id);
                if let Some(e) = e {
                    e.kill.cancel();
                }
                evicted = true;
            }
            // When every pending slot holds a validator claim there is no stranger to evict;
            // claims are bounded by the genesis size, so admitting one more stays bounded.
        }
        let id = t.next;
        t.next += 1;
        let kill = CancellationToken::new();
        t.entries.insert(id, Entry { ip, started: now, kill: kill.clone(), claim: None });
        *t.per_ip.entry(ip).or_insert(0) += 1;
        Ok((Ticket { admission: self.clone(), id, kill }, evicted))
    }

    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.table().entries.len()
    }
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        if let Some(v) = e.claim {
            if self.claimed.get(&v) == Some(&id) {
                self.claimed.remove(&v);
            }
        }
        Some(e)
    }
}

impl Ticket {
    /// Resolves when the connection was evicted to make room.
    pub(super) async fn evicted(&self) {
        self.kill.cancelled().await
    }

    /// Moves this connection to `validator`'s reserved slot. False if another connection
    /// already holds it (the newcomer is refused; the holder finishes or times out).
    pub(super) fn claim(&self, validator: ValidatorIndex) -> bool {
        let mut t = self.admission.table();
        match t.claimed.get(&validator) {
            Some(&holder) if holder != self.id => false,
            _ => {
                t.claimed.insert(validator, self.id);
                if let Some(e) = t.entries.get_mut(&self.id) {
                    e.claim = Some(validator);
                }
                true
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.table().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strangers_are_evicted_oldest_first_and_claims_are_kept() {
        let a = Arc::new(Admission::new(3, 2));
        let lo: IpAddr = [127, 0, 0, 1].into();
        let t0 = Instant::now();
        let (v, _) = a.admit(lo, t0).unwrap();
        assert!(v.claim(2));
        let (s1, _) = a.admit(lo, t0 + Duration::from_millis(1)).unwrap();
        let (_s2, _) = a.admit(lo, t0 + Duration::from_millis(2)).unwrap();
        let (_s3, evicted) = a.admit(lo, t0 + Duration::from_millis(3)).unwrap();
        assert!(evicted);
        assert!(s1.kill.is_cancelled(), "the oldest stranger goes");
        assert!(!v.kill.is_cancelled(), "a validator claim is never evicted by strangers");
        drop(s1);
        assert_eq!(a.pending(), 3);
        // One pending claim per validator.
        let (other, _) = a.admit(lo, t0 + Duration::from_millis(4)).unwrap();
        assert!(!other.claim(2));
        assert!(other.claim(1));
        drop(v);
        let (again, _) = a.admit(lo, t0 + Duration::from_millis(5)).unwrap();
        assert!(again.claim(2), "the reserved slot is free once its holder is gone");
    }

    #[test]
    fn per_ip_limit_applies_beyond_loopback() {
        let a = Arc::new(Admission::new(100, 2));
        let ip: IpAddr = [203, 0, 113, 7].into();
        let now = Instant::now();
        let _x = a.admit(ip, now).unwrap();
        let y = a.admit(ip, now).unwrap();
        assert_eq!(a.admit(ip, now).err(), Some(Denied::PerIp));
        drop(y);
        assert!(a.admit(ip, now).is_ok());
        let lo: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..5 {
            std::mem::forget(a.admit(lo, now).unwrap());
        }
    }
}
