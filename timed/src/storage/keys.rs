//! Fixed-width, big-endian table keys. redb compares `&[u8; N]` keys bytewise, so big-endian
//! numbers make key order equal numeric order (heights ascend, an outpoint's vouts ascend) and an
//! address's outputs sit next to each other in each key range of the address index.

use crate::chain::{Address, Hash256, OutPoint};

pub(super) const HEIGHT_LEN: usize = 8;
pub(super) const HASH_LEN: usize = 32;
pub(super) const OUTPOINT_LEN: usize = HASH_LEN + 4;
pub(super) const ADDRESS_LEN: usize = 21;
/// An address-index key of format 3: address then outpoint.
pub(super) const ADDRESS_OUTPOINT_LEN: usize = ADDRESS_LEN + OUTPOINT_LEN;
/// An address-index key: the outpoint's key range (see `overlay::slice_of`), address, outpoint.
pub(super) const ADDRESS_KEY_LEN: usize = 1 + ADDRESS_OUTPOINT_LEN;
/// A finalized-log key: sequence number then txid.
pub(super) const LOG_KEY_LEN: usize = 8 + HASH_LEN;
/// Tip as stored in the meta table: height then block hash.
pub(super) const TIP_LEN: usize = HEIGHT_LEN + HASH_LEN;

pub(super) fn height(h: u64) -> [u8; HEIGHT_LEN] {
    h.to_be_bytes()
}

pub(super) fn height_from(key: &[u8; HEIGHT_LEN]) -> u64 {
    u64::from_be_bytes(*key)
}

pub(super) fn log(seq: u64, txid: &Hash256) -> [u8; LOG_KEY_LEN] {
    let mut k = [0u8; LOG_KEY_LEN];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..].copy_from_slice(&txid.0);
    k
}

pub(super) fn log_seq(key: &[u8; LOG_KEY_LEN]) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

pub(super) fn log_txid(key: &[u8; LOG_KEY_LEN]) -> Hash256 {
    Hash256(key[8..].try_into().expect("32 bytes"))
}

pub(super) fn outpoint(op: &OutPoint) -> [u8; OUTPOINT_LEN] {
    let mut k = [0u8; OUTPOINT_LEN];
    k[..HASH_LEN].copy_from_slice(&op.txid.0);
    k[HASH_LEN..].copy_from_slice(&op.vout.to_be_bytes());
    k
}

pub(super) fn outpoint_from(key: &[u8]) -> OutPoint {
    let mut txid = [0u8; HASH_LEN];
    txid.copy_from_slice(&key[..HASH_LEN]);
    let mut vout = [0u8; 4];
    vout.copy_from_slice(&key[HASH_LEN..OUTPOINT_LEN]);
    OutPoint { txid: Hash256(txid), vout: u32::from_be_bytes(vout) }
}

pub(super) fn address(a: &Address) -> [u8; ADDRESS_LEN] {
    let mut k = [0u8; ADDRESS_LEN];
    k[0] = a.network_byte;
    k[1..].copy_from_slice(&a.hash);
    k
}

/// The address-index key of `op` paying to `a`. It starts with the outpoint's key range, as the
/// `utxos` key does by starting with the txid: a commit that writes one range of the held
/// entries then rewrites that range's pages of the address index only, not pages all over it
/// (docs/benchmarks.md, run AH).
pub(super) fn address_outpoint(a: &Address, op: &OutPoint) -> [u8; ADDRESS_KEY_LEN] {
    let mut k = [0u8; ADDRESS_KEY_LEN];
    k[0] = super::overlay::slice_of(&op.txid) as u8;
    k[1..=ADDRESS_LEN].copy_from_slice(&address(a));
    k[1 + ADDRESS_LEN..].copy_from_slice(&outpoint(op));
    k
}

/// The format-4 key of a format-3 address-index key (address then outpoint).
pub(super) fn address_outpoint_from_v3(old: &[u8; ADDRESS_OUTPOINT_LEN]) -> [u8; ADDRESS_KEY_LEN] {
    let mut k = [0u8; ADDRESS_KEY_LEN];
    k[0] = super::overlay::slice_of(&outpoint_from(&old[ADDRESS_LEN..]).txid) as u8;
    k[1..].copy_from_slice(old);
    k
}

/// The outpoint of an address-index key.
pub(super) fn address_key_outpoint(key: &[u8; ADDRESS_KEY_LEN]) -> OutPoint {
    outpoint_from(&key[1 + ADDRESS_LEN..])
}

/// First and last possible key of one address in one key range of the address index (both
/// inclusive).
pub(super) fn address_bounds(a: &Address, slice: usize) -> ([u8; ADDRESS_KEY_LEN], [u8; ADDRESS_KEY_LEN]) {
    let mut lo = [0u8; ADDRESS_KEY_LEN];
    let mut hi = [0xffu8; ADDRESS_KEY_LEN];
    for k in [&mut lo, &mut hi] {
        k[0] = slice as u8;
        k[1..=ADDRESS_LEN].copy_from_slice(&address(a));
    }
    (lo, hi)
}

pub(super) fn tip(h: u64, hash: &Hash256) -> [u8; TIP_LEN] {
    let mut k = [0u8; TIP_LEN];
    k[..HEIGHT_LEN].copy_from_slice(&h.to_be_bytes());
    k[HEIGHT_LEN..].copy_from_slice(&hash.0);
    k
}

/// None when the stored value has the wrong length.
pub(super) fn tip_from(bytes: &[u8]) -> Option<(u64, Hash256)> {
    if bytes.len() != TIP_LEN {
        return None;
    }
    let h = u64::from_be_bytes(bytes[..HEIGHT_LEN].try_into().ok()?);
    let hash = Hash256(bytes[HEIGHT_LEN..].try_into().ok()?);
    Some((h, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Network;

    #[test]
    fn byte_order_is_numeric_order() {
        assert!(height(255) < height(256));
        assert_eq!(height_from(&height(1 << 40)), 1 << 40);
        let t = Hash256::digest(b"t");
        let a = OutPoint { txid: t, vout: 255 };
        let b = OutPoint { txid: t, vout: 256 };
        assert!(outpoint(&a) < outpoint(&b));
        assert_eq!(outpoint_from(&outpoint(&b)), b);
        assert_eq!(tip_from(&tip(7, &t)), Some((7, t)));
        assert_eq!(tip_from(&[0u8; 3]), None);
    }

    #[test]
    fn address_bounds_cover_exactly_one_address_in_one_range() {
        let a = Address { network_byte: Network::Testnet as u8, hash: [7; 20] };
        let b = Address { network_byte: Network::Testnet as u8, hash: [8; 20] };
        let op = OutPoint { txid: Hash256([0xff; 32]), vout: u32::MAX };
        let k = address_outpoint(&a, &op);
        let (lo, hi) = address_bounds(&a, 7);
        assert!(lo <= k && k <= hi);
        assert_eq!(address_key_outpoint(&k), op);
        // Another range of the same address, and the same range of another address, lie outside.
        let (lo6, hi6) = address_bounds(&a, 6);
        assert!(k > hi6 && lo6 < lo);
        let other = address_outpoint(&b, &OutPoint { txid: Hash256([0xe0; 32]), vout: 0 });
        assert!(other > hi);
        let low = address_outpoint(&a, &OutPoint { txid: Hash256::ZERO, vout: 0 });
        assert!(low < address_bounds(&a, 1).0);
    }

    #[test]
    fn a_format_3_key_keeps_its_address_and_outpoint() {
        let a = Address { network_byte: Network::Testnet as u8, hash: [9; 20] };
        let op = OutPoint { txid: Hash256([0x5a; 32]), vout: 3 };
        let mut old = [0u8; ADDRESS_OUTPOINT_LEN];
        old[..ADDRESS_LEN].copy_from_slice(&address(&a));
        old[ADDRESS_LEN..].copy_from_slice(&outpoint(&op));
        assert_eq!(address_outpoint_from_v3(&old), address_outpoint(&a, &op));
    }
}
