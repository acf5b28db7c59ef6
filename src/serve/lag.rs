//! Which workers are lagging, and how long each answered request took: what a scheme can tell,
//! from the requests it sent and the answers it got, about how long each worker has been on
//! the request it is running.
//!
//! A worker runs its requests in the order sent and skips those cancelled before it reaches
//! them, answering nothing for them ([`super::worker::Cancel`]). So a request cancelled while
//! others were ahead of it will be skipped, and is forgotten; one cancelled at the head of the
//! line is being run, and keeps the worker busy until its answer comes: a straggler keeps
//! looking slow after its batch was decoded without it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Per worker, the requests it has not answered, oldest first, and when it last answered.
#[derive(Debug)]
pub(crate) struct Lag {
    queues: Vec<VecDeque<(u64, Instant)>>,
    answered: Vec<Option<Instant>>,
}

impl Lag {
    pub(crate) fn new(workers: usize) -> Self {
        Lag { queues: vec![VecDeque::new(); workers], answered: vec![None; workers] }
    }

    /// Request `id` went to `worker` at `at` (ids grow with time).
    pub(crate) fn sent(&mut self, worker: usize, id: u64, at: Instant) {
        if let Some(queue) = self.queues.get_mut(worker) {
            queue.push_back((id, at));
        }
    }

    /// `worker` answered request `id` at `at`: it is done with every request sent to it before.
    /// Returns how long it was on this one, from when it could start it (`None`: an id not
    /// sent to it, or answered before).
    pub(crate) fn answered(&mut self, worker: usize, id: u64, at: Instant) -> Option<Duration> {
        let queue = self.queues.get_mut(worker)?;
        let mut sent = None;
        while let Some(&(front, at)) = queue.front().filter(|&&(front, _)| front <= id) {
            queue.pop_front();
            sent = (front == id).then_some(at);
        }
        let started = sent.map(|sent| self.answered[worker].map_or(sent, |previous| previous.max(sent)));
        self.answered[worker] = Some(at);
        started.map(|started| at.saturating_duration_since(started))
    }

    /// Request `id` to `worker` is no longer needed: unless it is the one the worker is
    /// running, the worker will skip it.
    pub(crate) fn cancelled(&mut self, worker: usize, id: u64) {
        let Some(queue) = self.queues.get_mut(worker) else { return };
        if let Some(at) = queue.iter().skip(1).position(|&(queued, _)| queued == id) {
            queue.remove(at + 1);
        }
    }

    /// How long `worker` has been running its current request (since it was sent, or since the
    /// worker's previous answer if it came later); `None` when it has nothing to run.
    pub(crate) fn running_for(&self, worker: usize, now: Instant) -> Option<Duration> {
        let &(_, sent) = self.queues.get(worker)?.front()?;
        let started = self.answered[worker].map_or(sent, |answered| answered.max(sent));
        Some(now.saturating_duration_since(started))
    }

    /// Per worker, whether it has been running its current request for at least `after`.
    pub(crate) fn lagging(&self, after: Duration, now: Instant) -> Vec<bool> {
        (0..self.queues.len()).map(|w| self.running_for(w, now).is_some_and(|running| running >= after)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_straggler_stays_lagging_after_its_batch_is_cancelled() {
        let t0 = Instant::now();
        let mut lag = Lag::new(2);
        // Worker 0 is sent three requests; batch 1's is cancelled while it runs, batch 2's
        // while queued behind it.
        lag.sent(0, 1, t0);
        lag.sent(0, 2, t0 + MS);
        lag.sent(0, 3, t0 + 2 * MS);
        lag.cancelled(0, 1);
        lag.cancelled(0, 2);
        assert_eq!(lag.running_for(0, t0 + 30 * MS), Some(30 * MS), "still on request 1");
        assert_eq!(lag.lagging(20 * MS, t0 + 30 * MS), vec![true, false]);
        // Its late answer, 50 ms after it was sent: request 2 is skipped, request 3 starts now
        // and takes 6 ms.
        assert_eq!(lag.answered(0, 1, t0 + 50 * MS), Some(50 * MS));
        assert_eq!(lag.running_for(0, t0 + 55 * MS), Some(5 * MS));
        assert_eq!(lag.answered(0, 3, t0 + 56 * MS), Some(6 * MS));
        assert_eq!(lag.answered(0, 3, t0 + 57 * MS), None, "answered before");
        assert_eq!(lag.running_for(0, t0 + 90 * MS), None, "nothing to run is not lagging");
        assert_eq!(lag.lagging(MS, t0 + 90 * MS), vec![false, false]);
    }

    #[test]
    fn an_answer_settles_every_earlier_request() {
        let t0 = Instant::now();
        let mut lag = Lag::new(1);
        // Request 1 hung (no answer ever comes); the answer to 2 shows the worker moved on.
        lag.sent(0, 1, t0);
        lag.sent(0, 2, t0);
        assert_eq!(lag.answered(0, 2, t0 + 10 * MS), Some(10 * MS));
        assert_eq!(lag.running_for(0, t0 + 20 * MS), None);
        // A request sent to an idle worker runs from when it was sent.
        lag.sent(0, 3, t0 + 30 * MS);
        assert_eq!(lag.running_for(0, t0 + 32 * MS), Some(2 * MS));
        // Unknown workers are ignored, not a panic.
        lag.sent(5, 4, t0);
        assert_eq!(lag.answered(5, 4, t0), None);
        lag.cancelled(5, 4);
        assert_eq!(lag.running_for(5, t0), None);
    }
}
