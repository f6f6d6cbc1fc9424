//! The server's background work (the decision log's writer, the deferred audits, Redis lease
//! releases), started here and only here, so every task is tracked: at shutdown the server
//! waits for them to drain what their queues still hold instead of dropping it.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

/// The tasks started by [`Background::spawn`], by name.
#[derive(Default)]
pub struct Background {
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Background {
    /// Run `work` on the runtime (needs one). It must end on its own once the queue it reads
    /// closes, which happens when the server's state is dropped.
    pub fn spawn(&self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        #[expect(
            clippy::disallowed_methods,
            reason = "the one place background work starts: the handle is kept and awaited at shutdown"
        )]
        let handle = tokio::spawn(work);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|(_, h)| !h.is_finished());
        tasks.push((name, handle));
    }

    /// Wait up to `limit` for every task to end; the names of those still running after it
    /// (they are aborted).
    pub async fn drain(&self, limit: Duration) -> Vec<&'static str> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = Vec::new();
        for (name, mut handle) in tasks {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                handle.abort();
                left.push(name);
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_queued_work_and_names_what_did_not_end() {
        let bg = Background::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        bg.spawn("summer", async move {
            let mut sum = 0;
            while let Some(n) = rx.recv().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
                sum += n;
            }
            let _ = done_tx.send(sum);
        });
        bg.spawn("stuck", std::future::pending());
        for n in 1..=4 {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let left = bg.drain(Duration::from_millis(500)).await;
        assert_eq!(left, vec!["stuck"]);
        assert_eq!(done_rx.await.unwrap(), 10, "every queued item was handled");
    }
}
