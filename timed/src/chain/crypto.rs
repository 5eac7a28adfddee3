//! Hashes and ed25519 keys. Every signed message is domain separated (what it is) and bound
//! to a chain id (which network), so a signature can never be replayed in another context.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A 32-byte SHA-256d hash (txids, block hashes, merkle roots).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash256(pub [u8; 32]);

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

/// Hex in JSON/TOML, raw bytes in binary encodings.
macro_rules! hex_serde {
    ($t:ty, $n:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&hex::encode(self.0))
                } else {
                    self.0.serialize(s)
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
                    Ok(Self(<[u8; $n]>::deserialize(d)?))
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
    let Ok(vk) = VerifyingKey::from_bytes(&pk.0) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify_strict(&signing_message(domain, chain_id, payload), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn signature_serde_roundtrip() {
        let k = Keypair::generate();
        let s = k.sign(Domain::Vote, "c", b"x");
        let bytes = bincode::serialize(&s).unwrap();
        assert_eq!(bincode::deserialize::<Signature>(&bytes).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), s);
    }
}
