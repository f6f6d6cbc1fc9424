//! Test support: the mock upstream, a handle on the real `visa-proxy` binary, and the paths
//! and keys the test crates share.
#![allow(dead_code)] // Each test crate uses a different part of it.

pub mod mock_upstream;
pub mod postgres;
pub mod proxy;
pub mod redis;

/// The hex SHA-256 of a key, as `api_key_sha256` in a config holds it.
pub fn key_hash(key: &str) -> String {
    hex::encode(visa_proxy::config::hash_key(key))
}

/// The Touché23-ValueEval data set: `VISA_TOUCHE_DIR`, else the workplace's shared copy next to
/// the checkout.
pub fn touche_dir() -> std::path::PathBuf {
    std::env::var("VISA_TOUCHE_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/data/touche23-valueeval"
            )
            .into()
        })
}

/// Run a command of the real binary to the end; panics with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
