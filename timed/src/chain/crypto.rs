//! Hashes and ed25519 keys. Every signed message is domain separated (what it is) and bound
//! to a chain id (which network), so a signature can never be replayed in another context.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// A 32-byte SHA-256d hash (txids, block hashes, merkle roots).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Hash256(pub [u8; 32]);

/// Only the first 16 bytes go into a hasher. They are a hash output already, so uniform; two
/// values that share them take a 2^64 search to find, and a seeded table hashes them as one
/// `u128` (one multiply in foldhash) instead of its long path over 32 bytes and a length, which
/// was 3.5 % of a loaded node's CPU (docs/benchmarks.md, run AB). Equal values still hash
/// equally, which is all `Hash` must keep.
impl std::hash::Hash for Hash256 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (head, _) = self.0.split_first_chunk::<16>().expect("32 bytes");
        state.write_u128(u128::from_le_bytes(*head));
    }
}

impl Hash256 {
    pub const ZERO: Hash256 = Hash256([0u8; 32]);

    /// Double SHA-256, as Bitcoin uses for ids.
    pub fn digest(data: &[u8]) -> Self {
        let first = Sha256::digest(data);
        Hash256(Sha256::digest(first).into())
    }

    /// Hash of a domain tag followed by data, for values that must not collide across uses.
    pub fn tagged(tag: &str, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update((tag.len() as u32).to_le_bytes());
        h.update(tag.as_bytes());
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Hash256(Sha256::digest(h.finalize()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(Hash256(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl std::str::FromStr for Hash256 {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Hash256::from_hex(s).ok_or(())
    }
}

/// An ed25519 public key as raw bytes (validated when used).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        Some(PublicKey(hex::decode(s).ok()?.try_into().ok()?))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

/// An ed25519 signature as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", &hex::encode(&self.0[..8]))
    }
}

// serde has no impls for [u8; 64]; go through a byte slice.
impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                let arr: [u8; 64] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature(arr))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Signature, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Signature, A::Error> {
                let mut arr = [0u8; 64];
                for (i, b) in arr.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// 32 bytes as four `u64` read little-endian. In the one binary encoding used, bincode with
/// fixed-size integers (wire, store, hashed preimages), that is exactly the 32 bytes serde's
/// `[u8; 32]` gives, so no id, frame or stored value changes; but bincode takes them in 4
/// calls instead of 32 one-byte writes and reads, which were about 5 % of a loaded node
/// (docs/benchmarks.md, run AC).
struct Words<'a>(&'a [u8; 32]);

impl Serialize for Words<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(4)?;
        for word in self.0.chunks_exact(8) {
            t.serialize_element(&u64::from_le_bytes(word.try_into().expect("8 bytes")))?;
        }
        t.end()
    }
}

fn words_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = [u8; 32];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("32 bytes")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
            let mut out = [0u8; 32];
            for (i, word) in out.chunks_exact_mut(8).enumerate() {
                let w: u64 = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            Ok(out)
        }
    }
    d.deserialize_tuple(4, V)
}

/// Hex in JSON/TOML, raw bytes in binary encodings.
macro_rules! hex_serde {
    ($t:ty, $n:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&hex::encode(self.0))
                } else {
                    Words(&self.0).serialize(s)
                }
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
                    let arr: [u8; $n] = v
                        .try_into()
                        .map_err(|_| serde::de::Error::custom(concat!("expected ", $n, " hex-encoded bytes")))?;
                    Ok(Self(arr))
                } else {
                    Ok(Self(words_from(d)?))
                }
            }
        }
    };
}
hex_serde!(Hash256, 32);
hex_serde!(PublicKey, 32);

/// What a signature is for. Each purpose gets its own tag in the signed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Transaction,
    Block,
    Vote,
    Handshake,
    Heartbeat,
    Attestation,
}

impl Domain {
    fn tag(self) -> &'static str {
        match self {
            Domain::Transaction => "TIMECOIN/tx/v1",
            Domain::Block => "TIMECOIN/block/v1",
            Domain::Vote => "TIMECOIN/vote/v1",
            Domain::Handshake => "TIMECOIN/handshake/v1",
            Domain::Heartbeat => "TIMECOIN/heartbeat/v1",
            Domain::Attestation => "TIMECOIN/attestation/v1",
        }
    }
}

/// The exact bytes that are signed: tag, chain id and payload, each length-prefixed.
pub fn signing_message(domain: Domain, chain_id: &str, payload: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut m = Vec::with_capacity(16 + tag.len() + chain_id.len() + payload.len());
    m.extend_from_slice(&(tag.len() as u32).to_le_bytes());
    m.extend_from_slice(tag.as_bytes());
    m.extend_from_slice(&(chain_id.len() as u32).to_le_bytes());
    m.extend_from_slice(chain_id.as_bytes());
    m.extend_from_slice(payload);
    m
}

/// A signing key with its public half.
#[derive(Clone)]
pub struct Keypair {
    key: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.public())
    }
}

impl Keypair {
    pub fn generate() -> Self {
        Keypair { key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    pub fn from_secret(secret: [u8; 32]) -> Self {
        Keypair { key: SigningKey::from_bytes(&secret) }
    }

    /// A key anyone can recompute from a label. Only for devnets: it is public by design.
    pub fn insecure_from_label(label: &str) -> Self {
        Self::from_secret(Hash256::tagged("TIMECOIN/devnet-insecure-key", &[label.as_bytes()]).0)
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, domain: Domain, chain_id: &str, payload: &[u8]) -> Signature {
        Signature(self.key.sign(&signing_message(domain, chain_id, payload)).to_bytes())
    }
}

/// Strict ed25519 verification (rejects small-order keys and non-canonical signatures).
pub fn verify(pk: &PublicKey, domain: Domain, chain_id: &str, payload: &[u8], sig: &Signature) -> bool {
    verify_one(&pk.0, &signing_message(domain, chain_id, payload), &sig.0)
}

/// Facts about public keys worth remembering (payments reuse keys, and each fact costs a field
/// exponentiation or a scalar multiplication), shared by the threads that check signatures.
/// Bounded: cleared when full, since a miss only costs working the fact out again.
pub(crate) struct KeyCache<V> {
    map: OnceLock<Mutex<HashMap<[u8; 32], V>>>,
}

impl<V: Copy> KeyCache<V> {
    const LIMIT: usize = 65_536;

    pub(crate) const fn new() -> Self {
        KeyCache { map: OnceLock::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], V>> {
        self.map.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<V> {
        self.lock().get(key).copied()
    }

    pub(crate) fn insert(&self, key: [u8; 32], value: V) {
        let mut map = self.lock();
        if map.len() >= Self::LIMIT {
            map.clear();
        }
        map.insert(key, value);
    }
}

/// Decompressed keys (negated, as the equation uses them) that are not of small order.
static KEY_POINTS: KeyCache<EdwardsPoint> = KeyCache::new();

/// Whether a point encoding's `y` (low 255 bits) is below `p = 2^255 - 19`. Decompression
/// reduces `y ≥ p` silently; strict compares with a canonical compression, which never has it.
fn y_is_canonical(b: &[u8; 32]) -> bool {
    b[31] & 0x7f != 0x7f || b[1..31].iter().any(|x| *x != 0xff) || b[0] < 0xed
}

/// Strict's checks before its equation, with their results: `S`, `R`, `-A` and
/// `k = SHA-512(R ‖ A ‖ M)` over the given bytes. `None` when strict refuses without the
/// equation: `S ≥ l`, `A` or `R` undecodable or of small order, or `R` not canonically
/// encoded. Shared by [`verify_one`] and the batch verifier (`chain/batch.rs`), so both refuse
/// exactly what strict refuses up front. `-A` comes from a bounded cache: payments reuse keys,
/// and decompressing one costs a field exponentiation.
pub(crate) struct Prepared {
    pub s: Scalar,
    pub r: EdwardsPoint,
    pub minus_a: EdwardsPoint,
    pub k: Scalar,
}

impl Prepared {
    /// Strict's equation, `[S]B - [k]A = R`, compared as points (see [`verify_one`]).
    pub(crate) fn equation_holds(&self) -> bool {
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &self.minus_a, &self.s) == self.r
    }
}

pub(crate) fn prepare(pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Option<Prepared> {
    let (r_bytes, s_bytes) = sig.split_at(32);
    let r_bytes: &[u8; 32] = r_bytes.try_into().expect("32 bytes");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes.try_into().expect("32 bytes")))?;
    if !y_is_canonical(r_bytes) {
        return None;
    }
    let r = CompressedEdwardsY(*r_bytes).decompress()?;
    if r.is_small_order() {
        return None;
    }
    let minus_a = match KEY_POINTS.get(pk) {
        Some(p) => p,
        None => {
            let a = CompressedEdwardsY(*pk).decompress()?;
            if a.is_small_order() {
                return None;
            }
            KEY_POINTS.insert(*pk, -a);
            -a
        }
    };
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(pk);
    h.update(msg);
    Some(Prepared { s, r, minus_a, k: Scalar::from_hash(h) })
}

/// One signature, with exactly ed25519-dalek's `verify_strict` verdict (property tests in
/// `chain/batch.rs` compare the two on torsion, mixed-order and non-canonical inputs), for
/// about 15 % less here (docs/benchmarks.md, run Z). Strict pays three field exponentiations
/// besides the scalar multiplication: decompressing `A`, decompressing `R` (for its small-order
/// check), and compressing `[S]B - [k]A` to compare bytes. Here `A` comes decompressed from a
/// cache ([`prepare`]), and the result is compared with the decompressed `R` as a point,
/// projectively, with no inversion. The byte comparison and the point comparison differ only
/// when `R`'s encoding is not the canonical one of its point: `y ≥ p`, refused by
/// [`y_is_canonical`], or `x = 0` with the sign bit set, which only the two small-order points
/// with `x = 0` can have, refused as small order.
pub fn verify_one(pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    prepare(pk, msg, sig).is_some_and(|p| p.equation_holds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashers_see_the_first_half_and_maps_still_tell_values_apart() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let a = Hash256::digest(b"a");
        let mut tail = a;
        tail.0[31] ^= 1;
        let mut head = a;
        head.0[0] ^= 1;
        assert_eq!(state.hash_one(a), state.hash_one(tail), "bytes 16..32 are not hashed");
        assert_ne!(state.hash_one(a), state.hash_one(head));
        // Equality still reads all 32 bytes: a shared head is a collision, never a merge.
        let map: HashMap<Hash256, u8> = [(a, 1), (tail, 2), (head, 3)].into_iter().collect();
        assert_eq!((map.len(), map[&a], map[&tail], map[&head]), (3, 1, 2, 3));
    }

    #[test]
    fn signatures_bind_domain_and_chain() {
        let k = Keypair::insecure_from_label("a");
        let s = k.sign(Domain::Transaction, "net-a", b"hello");
        assert!(verify(&k.public(), Domain::Transaction, "net-a", b"hello", &s));
        assert!(!verify(&k.public(), Domain::Transaction, "net-b", b"hello", &s));
        assert!(!verify(&k.public(), Domain::Block, "net-a", b"hello", &s));
        assert!(!verify(&k.public(), Domain::Transaction, "net-a", b"hellO", &s));
    }

    #[test]
    fn devnet_keys_are_deterministic() {
        assert_eq!(Keypair::insecure_from_label("v1").public(), Keypair::insecure_from_label("v1").public());
        assert_ne!(Keypair::insecure_from_label("v1").public(), Keypair::insecure_from_label("v2").public());
    }

    /// The words must be the bytes serde gives a `[u8; 32]`: txids, block hashes, frames and
    /// the store all depend on it.
    #[test]
    fn hashes_and_keys_encode_as_their_32_bytes() {
        use rand::RngCore;
        for _ in 0..100 {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            let (h, k) = (Hash256(b), PublicKey(b));
            let bytes = bincode::serialize(&h).unwrap();
            assert_eq!(bytes, bincode::serialize(&b).unwrap());
            assert_eq!(bytes, b);
            assert_eq!(bincode::serialize(&k).unwrap(), b);
            assert_eq!(bincode::deserialize::<Hash256>(&bytes).unwrap(), h);
            assert_eq!(bincode::deserialize::<PublicKey>(&bytes).unwrap(), k);
            assert_eq!(serde_json::from_str::<Hash256>(&serde_json::to_string(&h).unwrap()).unwrap(), h);
            // In a structure, with what follows it.
            let pair = bincode::serialize(&(h, 7u32)).unwrap();
            assert_eq!(&pair[..32], &b);
            assert_eq!(bincode::deserialize::<(Hash256, u32)>(&pair).unwrap(), (h, 7));
            assert!(bincode::deserialize::<Hash256>(&bytes[..31]).is_err(), "one byte short");
        }
    }

    #[test]
    fn signature_serde_roundtrip() {
        let k = Keypair::generate();
        let s = k.sign(Domain::Vote, "c", b"x");
        let bytes = bincode::serialize(&s).unwrap();
        assert_eq!(bincode::deserialize::<Signature>(&bytes).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), s);
    }

    /// `y_is_canonical` is what stands in for strict's byte comparison of `R`, and no
    /// signature can reach it (a valid one whose `R` is encoded with `y ≥ p` needs a discrete
    /// log), so it is checked against decompress-then-compress directly: every `y` from p - 40
    /// to 2^255 - 1, both signs, and random encodings.
    #[test]
    fn canonical_y_is_what_compression_gives_back() {
        use rand::RngCore;
        let mut cases = Vec::new();
        // p = 2^255 - 19 is ed ff .. ff 7f little-endian: low bytes c5..=ff give p - 40 ..= p + 18.
        for low in 0xc5..=0xffu8 {
            for sign in [0, 0x80] {
                let mut c = [0xffu8; 32];
                c[0] = low;
                c[31] = 0x7f | sign;
                cases.push(c);
            }
        }
        for _ in 0..2000 {
            let mut c = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut c);
            cases.push(c);
        }
        let (mut decodable, mut refused) = (0, 0);
        for c in cases {
            let Some(p) = CompressedEdwardsY(c).decompress() else { continue };
            decodable += 1;
            // x = 0 with the sign bit is the one other non-canonical form: only small-order
            // points have it, and those are refused before this check matters.
            if p.is_small_order() {
                continue;
            }
            let canonical = p.compress().0 == c;
            refused += usize::from(!canonical);
            assert_eq!(y_is_canonical(&c), canonical, "{}", hex::encode(c));
        }
        assert!(decodable > 500 && refused > 0, "{decodable} decodable, {refused} non-canonical");
    }
}
