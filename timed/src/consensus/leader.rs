//! TSDC slot leaders: who proposes the block of a slot, and in which order the backups take
//! over when earlier proposers stay silent. Everything here is a pure function of chain data,
//! so every node computes the same ranking without talking to anyone.

use crate::chain::{BlockHash, Hash256, ValidatorIndex};

/// Domain tag of the ranking hash; changing it changes every schedule.
pub const LEADER_TAG: &str = "TIMECOIN/leader";

/// How many recent commit certificates decide who may lead.
pub const ELIGIBILITY_WINDOW: usize = 3;

/// The ranking key of one validator for one slot.
pub fn leader_key(prev_hash: &BlockHash, slot: u64, index: ValidatorIndex) -> Hash256 {
    Hash256::tagged(LEADER_TAG, &[&prev_hash.0, &slot.to_le_bytes(), &index.to_le_bytes()])
}

/// The proposers of `slot` in order: round `r` belongs to `ranking[r % len]`.
///
/// Keyed by the parent hash as well as the slot so that nobody can know the order of slots
/// beyond the next block in advance. Duplicates in `eligible` are dropped.
pub fn ranking(prev_hash: &Hash256, slot: u64, eligible: &[ValidatorIndex]) -> Vec<ValidatorIndex> {
    let mut keyed: Vec<(Hash256, ValidatorIndex)> =
        eligible.iter().map(|&i| (leader_key(prev_hash, slot, i), i)).collect();
    // Distinct indices never share a key in practice; the index breaks a tie regardless.
    // Equal indices have equal keys, so duplicates end up adjacent.
    keyed.sort_unstable();
    keyed.dedup_by_key(|(_, i)| *i);
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// The proposer of `round` in a ranking (none when the ranking is empty).
pub fn proposer(ranking: &[ValidatorIndex], round: u32) -> Option<ValidatorIndex> {
    if ranking.is_empty() {
        None
    } else {
        Some(ranking[round as usize % ranking.len()])
    }
}

/// Validators allowed to lead: those that signed at least one of the last
/// [`ELIGIBILITY_WINDOW`] commit certificates, so a crashed validator stops wasting rounds.
///
/// `recent_certs_signers` holds the signer lists of the most recent certificates, oldest
/// first; only the last three are read. A young chain (fewer than three certificates) lets
/// everyone lead, and the result is never empty (everyone again), so the chain cannot lock
/// itself out. Indices outside `0..n_validators` are ignored. The result is sorted.
pub fn eligible(n_validators: usize, recent_certs_signers: &[Vec<ValidatorIndex>]) -> Vec<ValidatorIndex> {
    let all = || (0..n_validators).map(|i| i as ValidatorIndex).collect::<Vec<_>>();
    if recent_certs_signers.len() < ELIGIBILITY_WINDOW {
        return all();
    }
    let mut signed = vec![false; n_validators];
    for signers in &recent_certs_signers[recent_certs_signers.len() - ELIGIBILITY_WINDOW..] {
        for &s in signers {
            if let Some(flag) = signed.get_mut(s as usize) {
                *flag = true;
            }
        }
    }
    let out: Vec<ValidatorIndex> = (0..n_validators).filter(|&i| signed[i]).map(|i| i as ValidatorIndex).collect();
    if out.is_empty() {
        all()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Hash256 {
        Hash256::digest(&n.to_le_bytes())
    }

    #[test]
    fn ranking_is_deterministic_permutation() {
        let elig: Vec<ValidatorIndex> = vec![0, 1, 2, 3, 4, 7];
        for slot in 0..50 {
            let a = ranking(&h(1), slot, &elig);
            assert_eq!(a, ranking(&h(1), slot, &elig));
            let mut sorted = a.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, elig);
            // Input order does not matter.
            let mut rev = elig.clone();
            rev.reverse();
            assert_eq!(ranking(&h(1), slot, &rev), a);
        }
        // Different parents give different orders for some slot.
        assert!((0..20).any(|s| ranking(&h(1), s, &elig) != ranking(&h(2), s, &elig)));
        assert_eq!(ranking(&h(1), 5, &[3, 3, 1]).len(), 2);
        assert!(ranking(&h(1), 5, &[]).is_empty());
    }

    #[test]
    fn proposer_wraps_rounds() {
        let r = ranking(&h(9), 3, &[0, 1, 2]);
        assert_eq!(proposer(&r, 0), Some(r[0]));
        assert_eq!(proposer(&r, 4), Some(r[1]));
        assert_eq!(proposer(&[], 0), None);
    }

    #[test]
    fn leadership_is_roughly_fair() {
        let elig: Vec<ValidatorIndex> = (0..5).collect();
        let mut firsts = [0u32; 5];
        let slots = 5000u64;
        for slot in 0..slots {
            let r = ranking(&h(slot / 7), slot, &elig);
            firsts[r[0] as usize] += 1;
        }
        // Expect 1000 each; 15% either way is far beyond sampling noise (sd ~ 28).
        for c in firsts {
            assert!((850..=1150).contains(&c), "unfair leader counts: {firsts:?}");
        }
    }

    #[test]
    fn eligibility_follows_recent_certs() {
        // Young chain: everyone.
        assert_eq!(eligible(4, &[]), vec![0, 1, 2, 3]);
        assert_eq!(eligible(4, &[vec![0, 1, 2], vec![0, 1, 2]]), vec![0, 1, 2, 3]);
        // Validator 3 signed none of the last three: excluded.
        let certs = vec![vec![3, 0, 1], vec![0, 1, 2], vec![0, 1, 2], vec![1, 2, 0]];
        assert_eq!(eligible(4, &certs), vec![0, 1, 2]);
        // One signature in the window is enough.
        let certs = vec![vec![0, 1, 2], vec![0, 1, 3], vec![0, 1, 2]];
        assert_eq!(eligible(4, &certs), vec![0, 1, 2, 3]);
        // Never empty; out-of-range signers ignored.
        assert_eq!(eligible(3, &[vec![9], vec![9], vec![9]]), vec![0, 1, 2]);
        let r = ranking(&h(0), 1, &eligible(4, &[vec![0, 1, 2], vec![0, 1, 2], vec![0, 2, 1]]));
        assert!(!r.contains(&3));
    }
}
