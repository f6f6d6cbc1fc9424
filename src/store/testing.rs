//! Test support shared by the unit and integration tests: a fresh PostgreSQL database per test,
//! so tests that need one run against a real server without seeing each other's rows.

#![expect(clippy::print_stderr, reason = "a skipped store test says why")]

/// A fresh, empty PostgreSQL database for one test, from `VISA_TEST_POSTGRES` (a libpq string
/// naming a server and a user that may create databases). Without it the test is skipped, unless
/// `VISA_REQUIRE_SERVICES` is set (as `.ci/run` sets it), where it fails. Blocking: call it off
/// an async runtime.
pub fn fresh_postgres() -> Option<String> {
    let Some(base) = std::env::var("VISA_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            std::env::var_os("VISA_REQUIRE_SERVICES").is_none(),
            "VISA_REQUIRE_SERVICES is set but VISA_TEST_POSTGRES is not"
        );
        eprintln!("skipped: VISA_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("visa_test_{}", uuid::Uuid::new_v4().simple());
    let created = postgres::Client::connect(&base, postgres::NoTls)
        .and_then(|mut admin| admin.batch_execute(&format!("CREATE DATABASE {name}")));
    if let Err(e) = created {
        panic!("creating a test database on {base:?}: {e}");
    }
    Some(format!("{base} dbname={name}"))
}
