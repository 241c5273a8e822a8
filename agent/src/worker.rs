//! One handle type for every loop the agent runs, thread or async task:
//! [`Worker::stop`] signals the loop's [`Shutdown`] and waits for it to end.
//! Each stage owns its loop and starts it through this type; the supervisor
//! only keeps the handles and stops them in pipeline order.
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A stop request shared by a loop and whoever stops it. Threads wait on it
/// with a timeout (their tick); async tasks await it.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stopped: Mutex<bool>,
    changed: Condvar,
    notify: tokio::sync::Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every loop holding this token to end.
    pub fn trigger(&self) {
        *self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.changed.notify_all();
        self.inner.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks for up to `timeout`; true when shutdown was asked for (then the
    /// loop should end), false when the time ran out (the next tick).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stopped = self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = match self.inner.changed.wait_timeout(stopped, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Resolves once shutdown was asked for.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag, so a trigger between the
            // check and the await is not lost.
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

/// A running loop: its name, its stop token and what to join.
pub struct Worker {
    name: String,
    shutdown: Shutdown,
    join: Join,
}

enum Join {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::runtime::Handle, tokio::task::JoinHandle<()>),
}

impl Worker {
    /// Runs `body` on a new OS thread named `name` (blocking loops: discovery,
    /// the sampler, rule evaluation). `body` gets the token to wait on.
    pub fn spawn_thread(name: &str, body: impl FnOnce(Shutdown) + Send + 'static) -> std::io::Result<Worker> {
        let shutdown = Shutdown::new();
        let token = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(token))?;
        Ok(Worker {
            name: name.to_string(),
            shutdown,
            join: Join::Thread(handle),
        })
    }

    /// Runs the future `body` returns as a task on `runtime` (async loops:
    /// notification delivery, alert forwarding).
    pub fn spawn_task<F>(name: &str, runtime: &tokio::runtime::Handle, body: impl FnOnce(Shutdown) -> F) -> Worker
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = Shutdown::new();
        let handle = runtime.spawn(body(shutdown.clone()));
        Worker {
            name: name.to_string(),
            shutdown,
            join: Join::Task(runtime.clone(), handle),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the loop to end and waits until it has. A loop that panicked is
    /// logged here, not propagated: stopping the rest must go on. Call it
    /// from outside the async runtime.
    pub fn stop(self) {
        self.shutdown.trigger();
        let ended = match self.join {
            Join::Thread(handle) => handle.join().is_ok(),
            Join::Task(runtime, handle) => runtime.block_on(handle).is_ok(),
        };
        if !ended {
            tracing::error!(worker = %self.name, "the loop had panicked before it was stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_worker_stops_promptly() {
        let ticks = Arc::new(Mutex::new(0u32));
        let t = ticks.clone();
        let w = Worker::spawn_thread("test-loop", move |stop| {
            while !stop.wait_timeout(Duration::from_millis(5)) {
                *t.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            }
        });
        let Ok(w) = w else { panic!("cannot start a thread") };
        // Wait (bounded) until the loop has ticked, so stop() interrupts a running loop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *ticks.lock().unwrap_or_else(|p| p.into_inner()) < 2 {
            assert!(Instant::now() < deadline, "the loop never ticked");
            std::thread::yield_now();
        }
        let started = Instant::now();
        w.stop();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn task_worker_stops_and_a_trigger_before_wait_is_kept() {
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        else {
            panic!("cannot build a runtime")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Worker::spawn_task("test-task", rt.handle(), move |stop| async move {
            stop.wait().await;
            let _ = tx.send(());
        });
        w.stop();
        assert!(rx.try_recv().is_ok(), "the task ended without seeing the shutdown");
        let s = Shutdown::new();
        s.trigger();
        assert!(s.wait_timeout(Duration::from_secs(5)));
        rt.block_on(s.wait());
    }

    #[test]
    fn a_panicking_loop_does_not_poison_stop() {
        let Ok(w) = Worker::spawn_thread("test-panic", |_| panic!("boom")) else {
            panic!("cannot start a thread")
        };
        w.stop();
    }
}
