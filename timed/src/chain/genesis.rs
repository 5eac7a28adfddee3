//! Genesis: the validator set, its tiers and the initial coins. The genesis block is a pure
//! function of this configuration, so every machine computes the same genesis hash.

use super::address::{Address, Network};
use super::amount::{checked_sum, COIN, DUST_LIMIT};
use super::block::{merkle_root, Block, BlockHeader, ValidatorIndex, BLOCK_VERSION};
use super::crypto::{Hash256, Keypair, PublicKey, Signature};
use super::tx::{Transaction, TxOut};
use serde::{Deserialize, Serialize};

/// Masternode tiers. Collateral is what a tier requires; weights decide how often a validator
/// is sampled for votes and what share of each block reward it earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Bronze,
    Silver,
    Gold,
}

impl Tier {
    pub fn collateral(self) -> u64 {
        match self {
            Tier::Free => 0,
            Tier::Bronze => 1_000 * COIN,
            Tier::Silver => 10_000 * COIN,
            Tier::Gold => 100_000 * COIN,
        }
    }

    /// Sampling grows slowly with stake so a few Gold nodes cannot crowd out the rest.
    pub fn sampling_weight(self) -> u64 {
        match self {
            Tier::Free => 1,
            Tier::Bronze => 2,
            Tier::Silver => 4,
            Tier::Gold => 8,
        }
    }

    /// Rewards follow collateral (Free nodes still earn a little for their uptime).
    pub fn reward_weight(self) -> u64 {
        match self {
            Tier::Free => 1,
            Tier::Bronze => 10,
            Tier::Silver => 100,
            Tier::Gold => 1_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorInfo {
    pub id: String,
    pub pubkey: PublicKey,
    pub tier: Tier,
    pub reward_address: Address,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub address: Address,
    /// Base units per output.
    pub amount: u64,
    /// How many outputs of `amount` to create (several let a wallet spend in parallel).
    #[serde(default = "one")]
    pub outputs: u32,
}

fn one() -> u32 {
    1
}

/// Block reward in base units, split among active validators by reward weight.
pub const BLOCK_REWARD: u64 = 10 * COIN;

/// 2025-12-23T00:00:00Z, the day the plan started: the fixed genesis time of devnets.
pub const DEVNET_GENESIS_MS: u64 = 1_766_448_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisConfig {
    pub chain_id: String,
    pub network: Network,
    pub timestamp_ms: u64,
    pub block_time_secs: u64,
    pub validators: Vec<ValidatorInfo>,
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("genesis has no validators")]
    NoValidators,
    #[error("genesis has {0} validators; at most 1000 are supported")]
    TooManyValidators(usize),
    #[error("validator id {0:?} appears more than once")]
    DuplicateValidator(String),
    #[error("validator public key of {0:?} is used twice")]
    DuplicateKey(String),
    #[error("validator id must be 1-64 characters of [A-Za-z0-9._-], got {0:?}")]
    BadValidatorId(String),
    #[error("chain id must be 1-64 characters, got {0:?}")]
    BadChainId(String),
    #[error("block time must be between 1 and 3600 seconds, got {0}")]
    BadBlockTime(u64),
    #[error("allocation to {0} is below the dust limit or has no outputs")]
    BadAllocation(String),
    #[error("allocations add up to more than the money supply")]
    AllocationOverflow,
    #[error("address {0} is for the wrong network")]
    WrongNetwork(String),
}

pub fn valid_validator_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl GenesisConfig {
    /// A devnet of `n` validators named validator1..validatorN. Every key is derived from its
    /// name, so anyone can sign as anyone: devnets only, never for value.
    pub fn devnet(n: usize, block_time_secs: u64) -> Self {
        let validators: Vec<ValidatorInfo> = (1..=n)
            .map(|i| {
                let id = format!("validator{i}");
                ValidatorInfo {
                    pubkey: devnet_validator_key(&id).public(),
                    reward_address: Address::from_pubkey(Network::Testnet, &devnet_wallet_key(&id).public()),
                    tier: Tier::Free,
                    id,
                }
            })
            .collect();
        let allocations = validators
            .iter()
            .map(|v| Allocation { address: v.reward_address, amount: 50_000 * COIN, outputs: 20 })
            .collect();
        GenesisConfig {
            chain_id: format!("timecoin-devnet-{n}"),
            network: Network::Testnet,
            timestamp_ms: DEVNET_GENESIS_MS,
            block_time_secs,
            validators,
            allocations,
        }
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.chain_id.is_empty() || self.chain_id.len() > 64 {
            return Err(GenesisError::BadChainId(self.chain_id.clone()));
        }
        if !(1..=3600).contains(&self.block_time_secs) {
            return Err(GenesisError::BadBlockTime(self.block_time_secs));
        }
        if self.validators.is_empty() {
            return Err(GenesisError::NoValidators);
        }
        if self.validators.len() > 1000 {
            return Err(GenesisError::TooManyValidators(self.validators.len()));
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for v in &self.validators {
            if !valid_validator_id(&v.id) {
                return Err(GenesisError::BadValidatorId(v.id.clone()));
            }
            if !ids.insert(v.id.as_str()) {
                return Err(GenesisError::DuplicateValidator(v.id.clone()));
            }
            if !keys.insert(v.pubkey) {
                return Err(GenesisError::DuplicateKey(v.id.clone()));
            }
            if v.reward_address.network() != self.network {
                return Err(GenesisError::WrongNetwork(v.reward_address.to_string()));
            }
        }
        let mut amounts = Vec::new();
        for a in &self.allocations {
            if a.amount < DUST_LIMIT || a.outputs == 0 {
                return Err(GenesisError::BadAllocation(a.address.to_string()));
            }
            if a.address.network() != self.network {
                return Err(GenesisError::WrongNetwork(a.address.to_string()));
            }
            amounts.extend(std::iter::repeat_n(a.amount, a.outputs as usize));
        }
        checked_sum(amounts).ok_or(GenesisError::AllocationOverflow)?;
        Ok(())
    }

    /// Hash of the whole configuration; the genesis block commits to it.
    pub fn config_hash(&self) -> Hash256 {
        Hash256::tagged("TIMECOIN/genesis-config", &[&bincode::serialize(self).expect("serializable")])
    }

    pub fn genesis_block(&self) -> Block {
        let outputs = self
            .allocations
            .iter()
            .flat_map(|a| std::iter::repeat_n(TxOut { value: a.amount, address: a.address }, a.outputs as usize))
            .collect();
        let coinbase = Transaction {
            version: super::tx::TX_VERSION,
            inputs: vec![],
            outputs,
            lock_time: 0,
            memo: Some(format!("genesis:{}", self.config_hash().to_hex()).into_bytes()),
        };
        let header = BlockHeader {
            version: BLOCK_VERSION,
            height: 0,
            prev_hash: Hash256::ZERO,
            merkle_root: merkle_root(&[coinbase.txid()]),
            timestamp_ms: self.timestamp_ms,
            slot: 0,
            round: 0,
            producer: 0,
            last_commit_hash: Hash256::ZERO,
        };
        Block { header, producer_sig: Signature([0; 64]), txs: vec![coinbase], last_commit: None }
    }

    pub fn genesis_hash(&self) -> Hash256 {
        self.genesis_block().hash()
    }

    pub fn validator_index(&self, id: &str) -> Option<ValidatorIndex> {
        self.validators.iter().position(|v| v.id == id).map(|i| i as ValidatorIndex)
    }

    pub fn network_byte(&self) -> u8 {
        self.network as u8
    }

    /// Number of matching votes that makes a quorum: more than two thirds of all validators.
    pub fn quorum(&self) -> usize {
        self.validators.len() * 2 / 3 + 1
    }

    /// Slot number at a wall-clock time.
    pub fn slot_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.timestamp_ms) / (self.block_time_secs * 1000)
    }

    pub fn slot_start_ms(&self, slot: u64) -> u64 {
        self.timestamp_ms + slot * self.block_time_secs * 1000
    }
}

/// The devnet signing key of a validator id (public knowledge).
pub fn devnet_validator_key(id: &str) -> Keypair {
    Keypair::insecure_from_label(&format!("validator-key/{id}"))
}

/// The devnet wallet key of a validator id (public knowledge).
pub fn devnet_wallet_key(id: &str) -> Keypair {
    Keypair::insecure_from_label(&format!("wallet-key/{id}"))
}

/// Splits `total` among `recipients` by reward weight; what rounding leaves over (and any
/// share below dust) goes to the producer. Deterministic: ordered by validator index.
pub fn reward_outputs(
    validators: &[ValidatorInfo],
    recipients: &[ValidatorIndex],
    producer: ValidatorIndex,
    total: u64,
) -> Vec<TxOut> {
    let mut recipients: Vec<ValidatorIndex> = recipients.to_vec();
    recipients.sort_unstable();
    recipients.dedup();
    let weight: u128 = recipients.iter().map(|i| validators[*i as usize].tier.reward_weight() as u128).sum();
    let mut shares: Vec<(ValidatorIndex, u64)> = Vec::new();
    let mut paid: u64 = 0;
    for i in &recipients {
        let w = validators[*i as usize].tier.reward_weight() as u128;
        let share = (total as u128 * w).checked_div(weight).unwrap_or(0) as u64;
        if share >= DUST_LIMIT {
            shares.push((*i, share));
            paid += share;
        }
    }
    let rest = total - paid;
    if rest > 0 {
        match shares.iter_mut().find(|(i, _)| *i == producer) {
            Some((_, s)) => *s += rest,
            None if rest >= DUST_LIMIT => {
                shares.push((producer, rest));
                shares.sort_unstable_by_key(|(i, _)| *i);
            }
            None => {}
        }
    }
    shares.into_iter().map(|(i, value)| TxOut { value, address: validators[i as usize].reward_address }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnet_genesis_is_deterministic() {
        let a = GenesisConfig::devnet(5, 10);
        let b = GenesisConfig::devnet(5, 10);
        assert_eq!(a.genesis_hash(), b.genesis_hash());
        assert_ne!(a.genesis_hash(), GenesisConfig::devnet(4, 10).genesis_hash());
        assert_ne!(a.genesis_hash(), GenesisConfig::devnet(5, 5).genesis_hash());
        a.validate().unwrap();
        // Pinned: a change here changes every devnet's identity (and splits mixed-version
        // testnets at the handshake), so it must be deliberate.
        assert_eq!(a.genesis_hash().to_hex(), "9551840fbd6255effe5c2142c573666dd6f32e4350c13c25547a07fdeed5afaa");
    }

    #[test]
    fn genesis_roundtrips_through_toml() {
        let g = GenesisConfig::devnet(3, 10);
        let text = toml::to_string(&g).unwrap();
        let back: GenesisConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.genesis_hash(), g.genesis_hash());
    }

    #[test]
    fn bad_genesis_is_refused() {
        let mut g = GenesisConfig::devnet(3, 10);
        g.validators[1].id = "validator1".into();
        assert!(matches!(g.validate(), Err(GenesisError::DuplicateValidator(_))));
        let mut g = GenesisConfig::devnet(3, 10);
        g.block_time_secs = 0;
        assert!(matches!(g.validate(), Err(GenesisError::BadBlockTime(0))));
        let mut g = GenesisConfig::devnet(3, 10);
        g.allocations[0].amount = u64::MAX / 2;
        assert_eq!(g.validate(), Err(GenesisError::AllocationOverflow));
    }

    #[test]
    fn rewards_add_up_and_follow_weight() {
        let mut g = GenesisConfig::devnet(4, 10);
        g.validators[3].tier = Tier::Gold;
        let outs = reward_outputs(&g.validators, &[0, 1, 2, 3], 1, BLOCK_REWARD);
        assert_eq!(outs.iter().map(|o| o.value).sum::<u64>(), BLOCK_REWARD);
        let gold = outs.iter().find(|o| o.address == g.validators[3].reward_address).unwrap();
        assert!(gold.value > BLOCK_REWARD * 9 / 10);
        // Only active validators are paid.
        let outs = reward_outputs(&g.validators, &[0, 2], 0, BLOCK_REWARD);
        assert_eq!(outs.len(), 2);
        assert_eq!(outs.iter().map(|o| o.value).sum::<u64>(), BLOCK_REWARD);
    }
}
