//! Chain types and the rules that need no node: amounts, keys, addresses, transactions,
//! blocks, genesis and transaction validation.

pub mod address;
pub mod amount;
pub mod batch;
pub mod block;
pub mod crypto;
pub mod genesis;
pub mod tx;
pub mod validate;

pub use address::{Address, Network};
pub use block::{Block, BlockHash, BlockHeader, CommitCert, ValidatorIndex};
pub use crypto::{Domain, Hash256, Keypair, PublicKey, Signature};
pub use genesis::{GenesisConfig, Tier, ValidatorInfo};
pub use tx::{IdentifiedTx, OutPoint, Transaction, TxIn, TxOut, Txid};
pub use validate::{TxError, UtxoView};
