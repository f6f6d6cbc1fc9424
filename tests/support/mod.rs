//! Test support: the mock upstream and a handle on the real `visa-proxy` binary.

pub mod mock_upstream;
pub mod proxy;

/// The hex SHA-256 of a key, as `api_key_sha256` in a config holds it.
pub fn key_hash(key: &str) -> String {
    hex::encode(visa_proxy::config::hash_key(key))
}
