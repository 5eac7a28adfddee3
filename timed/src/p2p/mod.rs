//! Peer-to-peer networking between validators.

pub mod message;
