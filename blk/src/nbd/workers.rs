//! The worker threads of one connection: where its slow requests run (large
//! reads and writes, flush, FUA, trim, block status), so that the
//! connection's own thread keeps reading and serving small requests and a
//! client keeps many requests in flight.
//!
//! At most [`MAX_WORKERS`] threads, started on demand and ended when the
//! connection's [`Workers`] is dropped and the queue is empty. The pool is
//! per connection on purpose: a worker blocked writing to a client that
//! stopped reading stalls that client only.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Most worker threads one connection runs.
pub(crate) const MAX_WORKERS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The worker pool of one connection. Dropping it lets the workers finish
/// what is queued, then end.
pub(crate) struct Workers {
    shared: Arc<Shared>,
}

impl Workers {
    pub fn new() -> Workers {
        Workers { shared: Arc::default() }
    }

    /// Run `job` on a worker.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut queue = self.shared.lock();
        queue.jobs.push_back(Box::new(job));
        if queue.idle >= queue.jobs.len() {
            drop(queue);
            self.shared.ready.notify_one();
            return;
        }
        if queue.threads >= MAX_WORKERS {
            // Every worker is busy; one takes the job when it is done.
            return;
        }
        queue.threads += 1;
        drop(queue);
        let shared = Arc::clone(&self.shared);
        let spawned =
            std::thread::Builder::new().name("nbd-worker".into()).spawn(move || work(&shared));
        if spawned.is_err() {
            // No thread to be had: run the queue here rather than never.
            let mut queue = self.shared.lock();
            queue.threads -= 1;
            if queue.threads == 0 {
                let jobs: Vec<Job> = queue.jobs.drain(..).collect();
                drop(queue);
                jobs.into_iter().for_each(|job| job());
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn work(shared: &Shared) {
    let mut queue = shared.lock();
    loop {
        if let Some(job) = queue.jobs.pop_front() {
            drop(queue);
            job();
            queue = shared.lock();
            continue;
        }
        if queue.closed {
            queue.threads -= 1;
            return;
        }
        queue.idle += 1;
        queue = shared.ready.wait(queue).unwrap_or_else(PoisonError::into_inner);
        queue.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_concurrently_up_to_the_worker_limit() {
        let workers = Workers::new();
        let gate = Arc::new(std::sync::Barrier::new(MAX_WORKERS));
        let (done, finished) = mpsc::channel();
        for _ in 0..MAX_WORKERS {
            let (gate, done) = (Arc::clone(&gate), done.clone());
            // Each job waits for all the others: only concurrency ends it.
            workers.submit(move || {
                gate.wait();
                done.send(()).unwrap();
            });
        }
        for _ in 0..MAX_WORKERS {
            finished.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    }

    #[test]
    fn queued_jobs_still_run_after_the_pool_is_dropped() {
        let workers = Workers::new();
        let (done, finished) = mpsc::channel();
        for i in 0..20 {
            let done = done.clone();
            workers.submit(move || done.send(i).unwrap());
        }
        drop(workers);
        let mut got: Vec<i32> =
            (0..20).map(|_| finished.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
