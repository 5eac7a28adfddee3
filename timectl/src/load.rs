//! Pre-signed payment load for `timectl bench`: funding many fresh keys from the devnet's
//! publicly derivable validator wallets, then one-input payments from those keys. Signing
//! happens before a step starts so the sender only ships bytes.

use timed::chain::address::{Address, Network};
use timed::chain::amount::min_fee;
use timed::chain::crypto::Keypair;
use timed::chain::genesis::devnet_wallet_key;
use timed::chain::tx::{OutPoint, Transaction, TxOut, Txid};
use timed::chain::validate::{MAX_TX_OUTPUTS, MAX_TX_SIZE};

/// Value of each coin a bench key receives; a payment sends it on minus [`PAYMENT_FEE`].
pub const COIN_VALUE: u64 = 1_000_000;
/// Above the minimum fee of a one-input, one-output payment (about 1,200 units).
pub const PAYMENT_FEE: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("chain {0:?} is not a devnet: bench needs funded keys it can derive")]
    NotDevnet(String),
    #[error("the validator wallets hold {have} spendable coins large enough to fund {need} more funding transactions")]
    NotEnoughFunds { have: usize, need: usize },
}

/// Key of a validator's devnet wallet, if the chain is a devnet (chain id `timecoin-devnet-N`).
pub fn devnet_funder(chain_id: &str, validator_id: &str) -> Result<Funder, LoadError> {
    if !chain_id.starts_with("timecoin-devnet-") {
        return Err(LoadError::NotDevnet(chain_id.to_string()));
    }
    let key = devnet_wallet_key(validator_id);
    let addr = Address::from_pubkey(Network::Testnet, &key.public());
    Ok(Funder { key, addr })
}

/// A wallet whose coins pay for the load.
pub struct Funder {
    pub key: Keypair,
    pub addr: Address,
}

/// A coin one bench key can spend.
#[derive(Clone, Debug)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub key: usize,
    pub value: u64,
}

/// Fresh keys for one run; random, so runs never collide with each other's coins.
pub struct Keys {
    pub keys: Vec<Keypair>,
    pub addrs: Vec<Address>,
}

impl Keys {
    pub fn generate(n: usize) -> Self {
        let keys: Vec<Keypair> = (0..n.max(1)).map(|_| Keypair::generate()).collect();
        let addrs = keys.iter().map(|k| Address::from_pubkey(Network::Testnet, &k.public())).collect();
        Keys { keys, addrs }
    }
}

/// Outputs per funding transaction: the output limit less one for change, and well inside the
/// size limit (an output is about 33 bytes).
pub fn outputs_per_funding_tx() -> usize {
    (MAX_TX_OUTPUTS - 1).min(MAX_TX_SIZE / 50)
}

/// One funding transaction: spends `input` (worth `input_value`, owned by `funder`) into `count`
/// coins for the bench keys, starting at key `first_key`, plus change back to the funder.
/// Returns it with the coins it creates, or None if the input is too small.
pub fn funding_tx(
    funder: &Funder,
    input: OutPoint,
    input_value: u64,
    keys: &Keys,
    first_key: usize,
    count: usize,
    chain_id: &str,
) -> Option<(Transaction, Vec<Coin>)> {
    let mut outputs: Vec<TxOut> = (0..count)
        .map(|i| TxOut { value: COIN_VALUE, address: keys.addrs[(first_key + i) % keys.addrs.len()] })
        .collect();
    outputs.push(TxOut { value: 0, address: funder.addr });
    let probe = Transaction::unsigned(vec![input], outputs.clone(), 0, None);
    // Signatures have a fixed size, so the unsigned size is the signed size.
    let fee = min_fee(probe.size()) + 1_000;
    let spent = COIN_VALUE.checked_mul(count as u64)?.checked_add(fee)?;
    let change = input_value.checked_sub(spent)?;
    if change < timed::chain::amount::DUST_LIMIT {
        outputs.pop();
    } else {
        outputs.last_mut().expect("change output").value = change;
    }
    let mut tx = Transaction::unsigned(vec![input], outputs, 0, None);
    tx.sign_all(&funder.key, chain_id);
    let txid = tx.txid();
    let coins = (0..count)
        .map(|i| Coin {
            outpoint: OutPoint { txid, vout: i as u32 },
            key: (first_key + i) % keys.keys.len(),
            value: COIN_VALUE,
        })
        .collect();
    Some((tx, coins))
}

/// A signed payment spending `coin` to another bench key: (txid, hex).
pub fn payment(coin: &Coin, keys: &Keys, chain_id: &str) -> (Txid, String) {
    let to = keys.addrs[(coin.key + 1) % keys.addrs.len()];
    let mut tx = Transaction::unsigned(
        vec![coin.outpoint],
        vec![TxOut { value: coin.value - PAYMENT_FEE, address: to }],
        0,
        None,
    );
    tx.sign_all(&keys.keys[coin.key], chain_id);
    (tx.txid(), tx.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use timed::chain::crypto::Hash256;

    #[test]
    fn funding_and_payments_pass_the_stateless_rules() {
        let chain = "timecoin-devnet-3";
        let funder = devnet_funder(chain, "validator1").unwrap();
        let keys = Keys::generate(7);
        let input = OutPoint { txid: Hash256::digest(b"x"), vout: 0 };
        let n = outputs_per_funding_tx();
        let (tx, coins) = funding_tx(&funder, input, 50_000 * 100_000_000, &keys, 5, n, chain).unwrap();
        assert!(tx.size() <= MAX_TX_SIZE && tx.outputs.len() <= MAX_TX_OUTPUTS, "{} bytes", tx.size());
        assert!(tx.verify_input(0, chain));
        assert_eq!(coins.len(), n);
        assert_eq!(coins[0].key, 5);
        assert_eq!(coins[3].key, 1, "keys wrap around");
        let (txid, hex) = payment(&coins[0], &keys, chain);
        let p = Transaction::from_hex(&hex).unwrap();
        assert_eq!(p.txid(), txid);
        assert!(p.verify_input(0, chain));
        assert!(min_fee(p.size()) <= PAYMENT_FEE);
        // An input that cannot pay for the coins is refused, not underflowed.
        assert!(funding_tx(&funder, input, COIN_VALUE, &keys, 0, 10, chain).is_none());
    }

    #[test]
    fn only_devnets_have_derivable_funders() {
        assert!(devnet_funder("timecoin-main", "validator1").is_err());
        let f = devnet_funder("timecoin-devnet-5", "validator2").unwrap();
        assert!(f.addr.matches(&f.key.public()));
    }
}
