//! Addresses: a network prefix (`TIME0` testnet, `TIME1` mainnet) followed by base58 of the
//! 20-byte key hash and a 4-byte checksum over prefix and hash.

use super::crypto::{Hash256, PublicKey};
use ripemd::Ripemd160;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Testnet,
    Mainnet,
}

impl Network {
    pub fn prefix(self) -> &'static str {
        match self {
            Network::Testnet => "TIME0",
            Network::Mainnet => "TIME1",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub network_byte: u8,
    pub hash: [u8; 20],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must start with TIME0 (testnet) or TIME1 (mainnet)")]
    BadPrefix,
    #[error("address body is not valid base58")]
    BadBase58,
    #[error("address body has the wrong length")]
    BadLength,
    #[error("address checksum does not match")]
    BadChecksum,
}

fn key_hash(pk: &PublicKey) -> [u8; 20] {
    let sha = Sha256::digest(pk.0);
    Ripemd160::digest(sha).into()
}

fn checksum(prefix: &str, hash: &[u8; 20]) -> [u8; 4] {
    let h = Hash256::tagged("TIMECOIN/address-checksum", &[prefix.as_bytes(), hash]);
    [h.0[0], h.0[1], h.0[2], h.0[3]]
}

impl Address {
    pub fn from_pubkey(network: Network, pk: &PublicKey) -> Self {
        Address { network_byte: network as u8, hash: key_hash(pk) }
    }

    pub fn network(&self) -> Network {
        if self.network_byte == Network::Mainnet as u8 {
            Network::Mainnet
        } else {
            Network::Testnet
        }
    }

    /// True when `pk` is the key this address pays to.
    pub fn matches(&self, pk: &PublicKey) -> bool {
        self.hash == key_hash(pk)
    }

    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let (network, body) = if let Some(b) = s.strip_prefix(Network::Testnet.prefix()) {
            (Network::Testnet, b)
        } else if let Some(b) = s.strip_prefix(Network::Mainnet.prefix()) {
            (Network::Mainnet, b)
        } else {
            return Err(AddressError::BadPrefix);
        };
        let raw = bs58::decode(body).into_vec().map_err(|_| AddressError::BadBase58)?;
        if raw.len() != 24 {
            return Err(AddressError::BadLength);
        }
        let hash: [u8; 20] = raw[..20].try_into().expect("length checked");
        if raw[20..] != checksum(network.prefix(), &hash) {
            return Err(AddressError::BadChecksum);
        }
        Ok(Address { network_byte: network as u8, hash })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.network().prefix();
        let mut raw = self.hash.to_vec();
        raw.extend_from_slice(&checksum(prefix, &self.hash));
        write!(f, "{}{}", prefix, bs58::encode(raw).into_string())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, AddressError> {
        Address::parse(s)
    }
}

// Addresses are strings to people and 21 bytes on the wire.
impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.network_byte, self.hash).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Address::parse(&s).map_err(serde::de::Error::custom)
        } else {
            let (network_byte, hash) = <(u8, [u8; 20])>::deserialize(d)?;
            Ok(Address { network_byte, hash })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::crypto::Keypair;
    use proptest::prelude::*;

    #[test]
    fn prefixes_and_checksum() {
        let pk = Keypair::insecure_from_label("x").public();
        let t = Address::from_pubkey(Network::Testnet, &pk).to_string();
        let m = Address::from_pubkey(Network::Mainnet, &pk).to_string();
        assert!(t.starts_with("TIME0"));
        assert!(m.starts_with("TIME1"));
        assert_ne!(Address::parse(&t).unwrap(), Address::parse(&m).unwrap());
        // Moving a testnet body under the mainnet prefix breaks the checksum.
        let forged = format!("TIME1{}", &t[5..]);
        assert_eq!(Address::parse(&forged), Err(AddressError::BadChecksum));
        assert_eq!(Address::parse("TIME0"), Err(AddressError::BadLength));
        assert_eq!(Address::parse("BTC1abc"), Err(AddressError::BadPrefix));
        assert_eq!(Address::parse("TIME0OOOO"), Err(AddressError::BadBase58));
    }

    proptest! {
        #[test]
        fn roundtrip(secret in any::<[u8; 32]>(), mainnet in any::<bool>()) {
            let net = if mainnet { Network::Mainnet } else { Network::Testnet };
            let pk = Keypair::from_secret(secret).public();
            let a = Address::from_pubkey(net, &pk);
            let parsed = Address::parse(&a.to_string()).unwrap();
            prop_assert_eq!(parsed, a);
            prop_assert!(parsed.matches(&pk));
        }

        #[test]
        fn any_single_char_change_is_caught(secret in any::<[u8; 32]>(), pos in 5usize..30, c in prop::sample::select(b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".to_vec())) {
            let s = Address::from_pubkey(Network::Testnet, &Keypair::from_secret(secret).public()).to_string();
            let mut bytes = s.clone().into_bytes();
            let pos = pos.min(bytes.len() - 1);
            prop_assume!(bytes[pos] != c);
            bytes[pos] = c;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(Address::parse(&changed).is_err());
        }
    }
}
