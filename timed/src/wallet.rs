//! The node's own wallet: one ed25519 key in the data directory, coin selection and signing.
//! Key files are hex secrets with mode 0600, written atomically.

use crate::chain::amount::{min_fee, DUST_LIMIT};
use crate::chain::{Address, Keypair, Network, OutPoint, Transaction, TxOut};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("cannot read key file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file {0} does not hold a 64-character hex secret")]
    BadKeyFile(PathBuf),
    #[error("insufficient funds: need {needed} base units, {available} spendable")]
    InsufficientFunds { needed: u64, available: u64 },
    #[error("amount is below the dust limit of {DUST_LIMIT} base units")]
    Dust,
    #[error("nothing to merge: {0} spendable outputs")]
    NothingToMerge(usize),
}

/// Loads a secret key from `path`, or creates it with `make` when the file does not exist.
pub fn load_or_create_key(path: &Path, make: impl FnOnce() -> Keypair) -> Result<Keypair, WalletError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| WalletError::BadKeyFile(path.into()))?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| WalletError::BadKeyFile(path.into()))?;
            Ok(Keypair::from_secret(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = make();
            write_secret(path, &key).map_err(|source| WalletError::Write { path: path.into(), source })?;
            Ok(key)
        }
        Err(source) => Err(WalletError::Read { path: path.into(), source }),
    }
}

fn write_secret(path: &Path, key: &Keypair) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(hex::encode(key.secret_bytes()).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

pub struct Wallet {
    key: Keypair,
    address: Address,
}

impl Wallet {
    pub fn new(key: Keypair, network: Network) -> Self {
        let address = Address::from_pubkey(network, &key.public());
        Wallet { key, address }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// Pays `amount` to `to` from `coins` (oldest first is the caller's order), with change
    /// back to the wallet and the minimum fee for the final size.
    pub fn pay(
        &self,
        coins: &[(OutPoint, TxOut)],
        to: Address,
        amount: u64,
        memo: Option<Vec<u8>>,
        chain_id: &str,
    ) -> Result<Transaction, WalletError> {
        if amount < DUST_LIMIT {
            return Err(WalletError::Dust);
        }
        let available: u64 = coins.iter().map(|(_, o)| o.value).sum();
        let mut picked: Vec<OutPoint> = Vec::new();
        let mut total: u64 = 0;
        for (op, out) in coins {
            picked.push(*op);
            total += out.value;
            // Re-estimate the fee as inputs are added: each input grows the transaction.
            let fee = self.fee_for(&picked, to, amount, true, &memo, chain_id);
            if total >= amount + fee {
                let change = total - amount - fee;
                let mut outputs = vec![TxOut { value: amount, address: to }];
                if change >= DUST_LIMIT {
                    outputs.push(TxOut { value: change, address: self.address });
                }
                let mut tx = Transaction::unsigned(picked, outputs, 0, memo);
                tx.sign_all(&self.key, chain_id);
                return Ok(tx);
            }
        }
        let fee = self.fee_for(&picked, to, amount, true, &memo, chain_id);
        Err(WalletError::InsufficientFunds { needed: amount + fee, available })
    }

    /// Spends `coins` into one output back to the wallet.
    pub fn merge(&self, coins: &[(OutPoint, TxOut)], chain_id: &str) -> Result<Transaction, WalletError> {
        if coins.len() < 2 {
            return Err(WalletError::NothingToMerge(coins.len()));
        }
        let total: u64 = coins.iter().map(|(_, o)| o.value).sum();
        let ops: Vec<OutPoint> = coins.iter().map(|(op, _)| *op).collect();
        let fee = self.fee_for(&ops, self.address, total, false, &None, chain_id);
        if total < fee + DUST_LIMIT {
            return Err(WalletError::InsufficientFunds { needed: fee + DUST_LIMIT, available: total });
        }
        let mut tx = Transaction::unsigned(ops, vec![TxOut { value: total - fee, address: self.address }], 0, None);
        tx.sign_all(&self.key, chain_id);
        Ok(tx)
    }

    /// Signs every input of `tx` that spends one of this wallet's outputs; returns whether all
    /// inputs are now signed by us.
    pub fn sign_owned(&self, tx: &mut Transaction, owned: impl Fn(&OutPoint) -> bool, chain_id: &str) -> bool {
        let mut complete = true;
        for i in 0..tx.inputs.len() {
            if owned(&tx.inputs[i].prevout) {
                tx.sign_input(i, &self.key, chain_id);
            } else {
                complete = false;
            }
        }
        complete
    }

    fn fee_for(
        &self,
        ins: &[OutPoint],
        to: Address,
        amount: u64,
        with_change: bool,
        memo: &Option<Vec<u8>>,
        chain_id: &str,
    ) -> u64 {
        let mut outputs = vec![TxOut { value: amount, address: to }];
        if with_change {
            outputs.push(TxOut { value: amount, address: self.address });
        }
        let mut probe = Transaction::unsigned(ins.to_vec(), outputs, 0, memo.clone());
        probe.sign_all(&self.key, chain_id);
        min_fee(probe.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::amount::COIN;
    use crate::chain::crypto::Hash256;
    use crate::chain::validate::check_transaction;
    use std::collections::HashMap;

    fn coins(w: &Wallet, values: &[u64]) -> Vec<(OutPoint, TxOut)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (OutPoint { txid: Hash256::digest(&[i as u8]), vout: 0 }, TxOut { value: *v, address: w.address() })
            })
            .collect()
    }

    #[test]
    fn payments_validate_with_change_and_min_fee() {
        let w = Wallet::new(Keypair::insecure_from_label("w"), Network::Testnet);
        let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("to").public());
        let cs = coins(&w, &[COIN, COIN, COIN]);
        let utxos: HashMap<OutPoint, TxOut> = cs.iter().cloned().collect();
        let tx = w.pay(&cs, to, COIN + COIN / 2, Some(b"hi".to_vec()), "c").unwrap();
        assert_eq!(tx.inputs.len(), 2);
        let fee = check_transaction(&tx, &utxos, "c", 0, 1).unwrap();
        assert_eq!(fee, min_fee(tx.size()));
        assert_eq!(tx.outputs[1].address, w.address());
        assert!(matches!(w.pay(&cs, to, 4 * COIN, None, "c"), Err(WalletError::InsufficientFunds { .. })));
        assert!(matches!(w.pay(&cs, to, 10, None, "c"), Err(WalletError::Dust)));
        let merged = w.merge(&cs, "c").unwrap();
        assert_eq!(merged.outputs.len(), 1);
        check_transaction(&merged, &utxos, "c", 0, 1).unwrap();
    }

    #[test]
    fn key_files_roundtrip_and_bad_files_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/wallet.key");
        let k1 = load_or_create_key(&p, Keypair::generate).unwrap();
        let k2 = load_or_create_key(&p, Keypair::generate).unwrap();
        assert_eq!(k1.public(), k2.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&p, "zz").unwrap();
        assert!(matches!(load_or_create_key(&p, Keypair::generate), Err(WalletError::BadKeyFile(_))));
    }
}
