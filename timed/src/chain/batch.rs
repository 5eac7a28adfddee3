//! Batch verification of ed25519 signatures that accepts exactly what `verify_strict` accepts.
//!
//! `verify_strict` (ed25519-dalek 2) accepts a signature `(R, S)` by key `A` on message `M`
//! iff: `S` is canonical (`S < l`); `A` and `R` decompress; neither is of small order; and the
//! canonical compression of `[S]B - [k]A`, `k = SHA-512(R || A || M)`, equals the 32 bytes of
//! `R`. That equation is cofactorless and compared byte for byte.
//!
//! A random-linear-combination batch checks `Σ zᵢ([Sᵢ]B - [kᵢ]Aᵢ - Rᵢ) = 0`. It can disagree
//! with strict in three ways, and each is closed here:
//! - an encoding strict refuses but decompression accepts (non-canonical `R`, `y ≥ p`): strict
//!   can never match those bytes (it compares with a canonical compression), so they are
//!   refused before batching, as are `S ≥ l`, undecodable points and small-order `R` or `A`;
//! - a torsion component in `R` or `A` (mixed order): then the error term `eᵢ` of a bad
//!   signature can lie in the 8-torsion, and `zᵢ·eᵢ = 0` whenever `zᵢ` is a multiple of its
//!   order (probability 1/2 for order 2), or two bad signatures' torsion can cancel. So only
//!   signatures whose `R` and `A` are in the prime-order subgroup enter the batch; there every
//!   nonzero `eᵢ` has order `l` and the batch passes a bad signature with probability at most
//!   2⁻¹²⁸ (128-bit random `zᵢ`), while a batch of strictly valid signatures always passes
//!   (each `eᵢ = 0`);
//! - a non-canonical `A` encoding: both paths hash the same bytes, but rather than argue it,
//!   such keys (and every input with torsion) are decided one by one.
//!
//! A batch that fails is decided one by one, so one bad signature never changes the verdict of
//! the others. "One by one" is strict's own equation on the pre-checked values
//! (`crypto::Prepared::equation_holds`, what `crypto::verify_one` does), not a second decoding.
//! Keys are reused by many payments, so a key's subgroup check is remembered; `R` is fresh per
//! signature and is checked each time.

use super::crypto::{prepare, KeyCache, Prepared, PublicKey};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;

/// One signature to check: key bytes, the exact signed message, signature bytes.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub pk: &'a PublicKey,
    pub msg: &'a [u8],
    pub sig: &'a [u8; 64],
}

/// `verify_strict` on one item (the reference the batch must agree with).
pub fn verify_strict(item: &Item) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&item.pk.0) else {
        return false;
    };
    vk.verify_strict(item.msg, &ed25519_dalek::Signature::from_bytes(item.sig)).is_ok()
}

/// How an item is decided.
enum Plan {
    /// Strict refuses it whatever the equation says.
    Reject,
    /// The batch cannot decide it exactly: strict's equation alone.
    Single(Prepared),
    /// Ready for the batch.
    Batch(Prepared),
}

/// Keys already known to be canonical and in the prime-order subgroup (a miss only costs one
/// subgroup check).
static SUBGROUP_KEYS: KeyCache<()> = KeyCache::new();

/// `[l]P == 0`, in variable time (all inputs are public): `(l-1)·P + P`, since the scalar
/// `-1` is the integer `l - 1` to the multiplication.
fn in_prime_subgroup(p: &EdwardsPoint) -> bool {
    let l_minus_one = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-Scalar::ONE), p, &Scalar::ZERO);
    (l_minus_one + p).is_identity()
}

fn plan(item: &Item) -> Plan {
    // Strict's own refusals first, identically (shared with `crypto::verify_one`).
    let Some(p) = prepare(&item.pk.0, item.msg, item.sig) else {
        return Plan::Reject;
    };
    if SUBGROUP_KEYS.get(&item.pk.0).is_none() {
        let a = -p.minus_a;
        if a.compress().0 != item.pk.0 || !in_prime_subgroup(&a) {
            return Plan::Single(p);
        }
        SUBGROUP_KEYS.insert(item.pk.0, ());
    }
    if !in_prime_subgroup(&p.r) {
        return Plan::Single(p);
    }
    Plan::Batch(p)
}

/// Verdicts for `items`, in order: `out[i] == verify_strict(&items[i])` for every input (the
/// batch part errs towards acceptance with probability at most 2⁻¹²⁸, see the module doc).
pub fn verify_many(items: &[Item]) -> Vec<bool> {
    let mut out = vec![false; items.len()];
    let mut batch: Vec<(usize, Prepared)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match plan(item) {
            Plan::Reject => {}
            Plan::Single(p) => out[i] = p.equation_holds(),
            Plan::Batch(p) => batch.push((i, p)),
        }
    }
    // One signature: the batch equation costs as much as strict's own, so use that; and a
    // batch that fails is decided one by one.
    if batch.len() > 1 && batch_equation_holds(&batch) {
        for (i, _) in &batch {
            out[*i] = true;
        }
    } else {
        for (i, p) in &batch {
            out[*i] = p.equation_holds();
        }
    }
    out
}

/// `Σ zᵢ·Sᵢ·B - Σ zᵢ·Rᵢ + Σ (zᵢ·kᵢ)·(-Aᵢ) == 0` with fresh random 128-bit `zᵢ`.
fn batch_equation_holds(batch: &[(usize, Prepared)]) -> bool {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let zs: Vec<Scalar> = batch.iter().map(|_| Scalar::from(rng.gen::<u128>())).collect();
    let b_coeff: Scalar = batch.iter().zip(&zs).map(|((_, p), z)| z * p.s).sum();
    let scalars =
        std::iter::once(b_coeff).chain(zs.iter().map(|z| -z)).chain(batch.iter().zip(&zs).map(|((_, p), z)| z * p.k));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(batch.iter().map(|(_, p)| p.r))
        .chain(batch.iter().map(|(_, p)| p.minus_a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

#[cfg(test)]
mod tests {
    //! The batch must agree with `verify_strict` on every input, including the ones where a
    //! plain random-linear-combination batch does not: small-order and mixed-order points,
    //! non-canonical encodings. Each case builds signatures by hand from scalars, so torsion
    //! can be put exactly where a test wants it.
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use proptest::prelude::*;
    use sha2::{Digest, Sha512};

    /// A signer over raw scalars: `A = [a]B + ta`, `R = [r]B + tr`, `S = r + k·a`.
    fn sign_raw(a: Scalar, ta: EdwardsPoint, r: Scalar, tr: EdwardsPoint, msg: &[u8]) -> (PublicKey, [u8; 64]) {
        let a_point = EdwardsPoint::mul_base(&a) + ta;
        let r_point = EdwardsPoint::mul_base(&r) + tr;
        let (a_enc, r_enc) = (a_point.compress().0, r_point.compress().0);
        let mut h = Sha512::new();
        h.update(r_enc);
        h.update(a_enc);
        h.update(msg);
        let s = r + Scalar::from_hash(h) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_enc);
        sig[32..].copy_from_slice(s.as_bytes());
        (PublicKey(a_enc), sig)
    }

    fn scalar(seed: [u8; 32]) -> Scalar {
        let mut wide = [0u8; 64];
        wide[..32].copy_from_slice(&seed);
        wide[32..].copy_from_slice(&Sha512::digest(seed)[..32]);
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    /// `y = p + delta` little-endian, with the sign bit: a non-canonical encoding when it decodes.
    fn non_canonical(delta: u8, sign: bool) -> [u8; 32] {
        // p = 2^255 - 19: bytes ed ff .. ff 7f
        let mut b = [0xffu8; 32];
        b[0] = 0xed;
        b[31] = 0x7f;
        b[0] = b[0].wrapping_add(delta); // delta < 19 keeps it below 2^255
        if sign {
            b[31] |= 0x80;
        }
        b
    }

    /// S + l (still 32 bytes when S is small enough): the same scalar, non-canonically.
    fn add_l(s: &[u8]) -> Option<[u8; 32]> {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = s[i] as u16 + L[i] as u16 + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        (carry == 0).then_some(out)
    }

    /// One test input, with its message.
    #[derive(Clone, Debug)]
    struct Case {
        pk: PublicKey,
        msg: Vec<u8>,
        sig: [u8; 64],
    }

    /// Builds one case of kind `kind` from the seeds.
    fn make(kind: u8, a: [u8; 32], r: [u8; 32], t: usize, msg: Vec<u8>, junk: [u8; 64]) -> Case {
        let (a, r, id) = (scalar(a), scalar(r), EdwardsPoint::default());
        let tor = EIGHT_TORSION[t % 8];
        let case = |pk, sig| Case { pk, msg: msg.clone(), sig };
        match kind % 11 {
            // A valid signature.
            0 => {
                let (pk, sig) = sign_raw(a, id, r, id, &msg);
                case(pk, sig)
            }
            // Signed for another message.
            1 => {
                let (pk, sig) = sign_raw(a, id, r, id, b"another message");
                case(pk, sig)
            }
            // Small-order A (one of the 8 torsion points), any signature.
            2 => {
                let (_, sig) = sign_raw(a, id, r, id, &msg);
                case(PublicKey(tor.compress().0), sig)
            }
            // Small-order R with a signature equation built around it: S = k·a, so
            // [S]B - [k]A = 0 and R = torsion differs from it only by torsion.
            3 => {
                let (pk, mut sig) = sign_raw(a, id, Scalar::ZERO, tor, &msg);
                sig[..32].copy_from_slice(&tor.compress().0);
                case(pk, sig)
            }
            // Mixed-order A: A = [a]B + T; strict accepts iff k·T = 0.
            4 => {
                let (pk, sig) = sign_raw(a, tor, r, id, &msg);
                case(pk, sig)
            }
            // Mixed-order R: R = [r]B + T; the equation is off by exactly T.
            5 => {
                let (pk, sig) = sign_raw(a, id, r, tor, &msg);
                case(pk, sig)
            }
            // Non-canonical S (S + l).
            6 => {
                let (pk, mut sig) = sign_raw(a, id, r, id, &msg);
                match add_l(&sig[32..]) {
                    Some(s) => sig[32..].copy_from_slice(&s),
                    None => sig[63] |= 0x80,
                }
                case(pk, sig)
            }
            // Non-canonical R encoding (y >= p).
            7 => {
                let (pk, mut sig) = sign_raw(a, id, r, id, &msg);
                sig[..32].copy_from_slice(&non_canonical((t % 19) as u8, t.is_multiple_of(2)));
                case(pk, sig)
            }
            // Non-canonical A encoding (y >= p).
            8 => {
                let (_, sig) = sign_raw(a, id, r, id, &msg);
                case(PublicKey(non_canonical((t % 19) as u8, !t.is_multiple_of(2))), sig)
            }
            // Random bytes.
            9 => {
                let mut sig = [0u8; 64];
                sig.copy_from_slice(&junk);
                case(PublicKey(junk[..32].try_into().unwrap()), sig)
            }
            // Mixed order in both A and R, torsion chosen so the two cancel when k ≡ 1.
            _ => {
                let (pk, sig) = sign_raw(a, tor, r, -tor, &msg);
                case(pk, sig)
            }
        }
    }

    fn check(cases: &[Case]) {
        let items: Vec<Item> = cases.iter().map(|c| Item { pk: &c.pk, msg: &c.msg, sig: &c.sig }).collect();
        let strict: Vec<bool> = items.iter().map(verify_strict).collect();
        assert_eq!(verify_many(&items), strict, "batch and verify_strict disagree on {cases:?}");
        // Twice: the second call finds each key in the cache.
        for _ in 0..2 {
            let one: Vec<bool> =
                items.iter().map(|it| crate::chain::crypto::verify_one(&it.pk.0, it.msg, it.sig)).collect();
            assert_eq!(one, strict, "verify_one and verify_strict disagree on {cases:?}");
        }
    }

    fn case_strategy(kinds: std::ops::Range<u8>) -> impl Strategy<Value = Case> {
        (
            kinds,
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            0usize..64,
            proptest::collection::vec(any::<u8>(), 0..48),
            proptest::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(k, a, r, t, msg, junk)| make(k, a, r, t, msg, junk.try_into().unwrap()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every kind alone: the verdict is strict's.
        #[test]
        fn each_kind_alone_agrees_with_strict(c in case_strategy(0..11)) {
            check(std::slice::from_ref(&c));
        }

        /// Mixed batches (valid and invalid of every kind): every verdict is strict's, so
        /// one bad signature never changes another's.
        #[test]
        fn mixed_batches_agree_with_strict(cases in proptest::collection::vec(case_strategy(0..11), 2..40)) {
            check(&cases);
        }

        /// Batches of valid signatures with one torsioned or invalid signature slipped in.
        #[test]
        fn one_bad_among_valid(valid in proptest::collection::vec(case_strategy(0..1), 8..64),
                               bad in case_strategy(1..11), at in any::<prop::sample::Index>()) {
            let mut cases = valid;
            let i = at.index(cases.len() + 1);
            cases.insert(i, bad);
            check(&cases);
        }
    }

    #[test]
    fn valid_batch_is_accepted_whole() {
        let cases: Vec<Case> =
            (0..64u8).map(|i| make(0, [i; 32], [i.wrapping_add(100); 32], 0, vec![i], [0; 64])).collect();
        let items: Vec<Item> = cases.iter().map(|c| Item { pk: &c.pk, msg: &c.msg, sig: &c.sig }).collect();
        assert!(verify_many(&items).iter().all(|ok| *ok));
    }

    /// The cases above are not vacuous: without the subgroup pre-check, the bare batch
    /// equation accepts a mixed-order R (off by a point of order 2) whenever `z` is even, which
    /// strict never does. Over 64 tries that happens with probability 1 - 2⁻⁶⁴.
    #[test]
    fn bare_batch_equation_accepts_what_strict_refuses() {
        let t2 = EIGHT_TORSION[4]; // the point of order 2
        let msg = b"payment".to_vec();
        let mut accepted = 0;
        for i in 0..64u8 {
            let valid = make(0, [i; 32], [i ^ 0x55; 32], 0, msg.clone(), [0; 64]);
            let (pk, sig) = sign_raw(scalar([i; 32]), EdwardsPoint::default(), scalar([i ^ 0xaa; 32]), t2, &msg);
            let bad = Item { pk: &pk, msg: &msg, sig: &sig };
            assert!(!verify_strict(&bad));
            // Strict's pre-checks pass for both: the mixed-order R is not of small order.
            let prep = |it: &Item| (0, prepare(&it.pk.0, it.msg, it.sig).expect("passes the pre-checks"));
            let good = Item { pk: &valid.pk, msg: &valid.msg, sig: &valid.sig };
            if batch_equation_holds(&[prep(&good), prep(&bad)]) {
                accepted += 1;
            }
            assert_eq!(verify_many(&[good, bad]), vec![true, false]);
        }
        assert!(accepted > 0, "the bare equation never accepted the mixed-order R");
    }
}
