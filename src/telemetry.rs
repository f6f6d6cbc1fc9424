//! Structured logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG` or the config.
//! Lines are written by a background thread, so request threads only format them.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. Keep the returned guard alive until exit: dropping it flushes
/// the lines still queued. A second call (tests, benchmarks) keeps the first subscriber.
pub fn init(log: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Under a flood of lines, drop some rather than stall requests.
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
