//! Bounded blocking work: the few things a request can ask of a pod that
//! cost a core and megabytes for a while (argon2 password hashes, image
//! decoding) run on tokio's blocking pool, at most a fixed number at once.
//!
//! A slot is held by the work, not by the request that asked for it: a
//! client that hangs up stops waiting for the result, but the work already
//! started runs to its end, and until then nobody else gets its slot. (Held
//! by the request, a slot came free on the hang-up while the work went on:
//! clients that closed right after sending ran any number of hashes or
//! decodes at once.)

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Semaphore;

/// At most `slots` pieces of blocking work at once.
pub struct Slots {
    permits: Arc<Semaphore>,
    max_wait: Option<Duration>,
    /// Work running now (`chat_blocking_work_running{work=...}`).
    running: IntGauge,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No slot came free within the wait allowed.
    #[error("every slot is busy")]
    Busy,
    #[error("blocking task failed: {0}")]
    Failed(#[from] tokio::task::JoinError),
}

impl From<SlotError> for crate::wire::errors::WireError {
    fn from(error: SlotError) -> Self {
        match error {
            // Only password hashing waits for a slot a bounded time.
            SlotError::Busy => Self {
                detail: Some("password hashing saturated: request turned away".into()),
                ..Self::busy(
                    "the server is busy checking other passwords; try again in a moment",
                    Duration::from_secs(1),
                )
            },
            SlotError::Failed(e) => Self::internal(e),
        }
    }
}

/// Counts a piece of work as running for as long as it lives, panics included.
struct Running(IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Slots {
    /// `slots` at once (at least one); a caller waits at most `max_wait` for
    /// one (then [`SlotError::Busy`]), or as long as it takes.
    pub fn new(slots: usize, max_wait: Option<Duration>, running: IntGauge) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(slots.max(1))),
            max_wait,
            running,
        }
    }

    /// Runs `work` on the blocking pool once a slot is free. Waiters are
    /// served in arrival order (tokio's semaphore is fair).
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SlotError> {
        let acquire = self.permits.clone().acquire_owned();
        let permit = match self.max_wait {
            Some(wait) => tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| SlotError::Busy)?,
            None => acquire.await,
        }
        .map_err(|_| SlotError::Busy)?;
        let running = self.running.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let _slot = permit;
            running.inc();
            let _running = Running(running);
            work()
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn slots(n: usize, max_wait: Option<Duration>) -> Arc<Slots> {
        let gauge = IntGauge::new("running", "work running").unwrap();
        Arc::new(Slots::new(n, max_wait, gauge))
    }

    #[tokio::test]
    async fn at_most_so_many_run_and_late_waiters_are_turned_away() {
        let pool = slots(2, None);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(pool.running.get(), 0);

        let wait = Duration::from_millis(300);
        let pool = slots(1, Some(wait));
        let busy = pool.clone();
        let holder = tokio::spawn(async move {
            busy.run(move || std::thread::sleep(wait + Duration::from_millis(500)))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(pool.run(|| ()).await, Err(SlotError::Busy)));
        assert!(holder.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_slot_taken_until_its_work_ends() {
        let pool = slots(1, None);
        let (started, wait_started) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let caller = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    finished.recv().unwrap();
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || wait_started.recv().unwrap())
            .await
            .unwrap();
        // The client hangs up: its request's future is dropped.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert_eq!(pool.running.get(), 1, "the work goes on");
        let next = tokio::time::timeout(Duration::from_millis(300), pool.run(|| ())).await;
        assert!(
            next.is_err(),
            "the slot went to the next caller while the work ran"
        );
        finish.send(()).unwrap();
        pool.run(|| ()).await.unwrap();
        assert_eq!(pool.running.get(), 0);
    }
}
