//! Test support: the mock upstream and a handle on the real `visa-proxy` binary.

pub mod mock_upstream;
pub mod proxy;
