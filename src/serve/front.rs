//! The front every scheme shares: admission up to a capacity, a ticket per accepted query,
//! the thread that owns the scheme's state, joined on shutdown, and the dynamic batcher.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::answer::{Answer, LiveStats, ServeError, Stats, Ticket};
use super::worker::{Cancel, Worker};

/// Where each of `workers` runs ([`Worker::location`]), in their order.
pub(crate) fn locations(workers: &[Arc<dyn Worker>]) -> Vec<String> {
    workers.iter().map(|w| w.location()).collect()
}

/// An accepted query and where its result goes.
pub(crate) struct Submission {
    pub query: Vec<f32>,
    pub reply: Sender<Result<Answer, ServeError>>,
    /// Set when nobody waits for the result any more (shared by the queries submitted
    /// together): the query is then dropped if it has not gone out, and a batch whose every
    /// query is abandoned is cancelled ([`ServeError::Cancelled`]).
    pub abandoned: Cancel,
    /// When it was accepted: its wait in the batcher is counted at dispatch.
    pub arrived: Instant,
}

pub(crate) struct Front {
    submissions: Option<Sender<Submission>>,
    in_flight: Arc<AtomicUsize>,
    live: LiveStats,
    capacity: usize,
    input_len: usize,
    /// Where each of the scheme's workers runs ([`Worker::location`]), in index order.
    locations: Vec<String>,
    thread: Option<JoinHandle<Stats>>,
}

impl Front {
    /// Starts the scheme's thread, `run(submissions, in_flight, live)`, which must answer every
    /// submission exactly once (through [`answer`]), publish its counts to `live` as it goes and
    /// return them when the submissions close. `locations`: where each of the workers `run`
    /// drives runs ([`locations`]).
    pub fn spawn(
        name: &str,
        (capacity, input_len): (usize, usize),
        locations: Vec<String>,
        run: impl FnOnce(Receiver<Submission>, Arc<AtomicUsize>, LiveStats) -> Stats + Send + 'static,
    ) -> Result<Self, String> {
        let (submissions, incoming) = crossbeam_channel::unbounded();
        let (in_flight, live) = (Arc::new(AtomicUsize::new(0)), LiveStats::default());
        let (counter, publish) = (in_flight.clone(), live.clone());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(incoming, counter, publish))
            .map_err(|e| e.to_string())?;
        Ok(Front {
            submissions: Some(submissions),
            in_flight,
            live,
            capacity,
            input_len,
            locations,
            thread: Some(thread),
        })
    }

    /// Accepts `query` (or refuses it at once, with nothing queued).
    pub fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        let mut tickets = self.submit_all(vec![query])?;
        tickets.pop().ok_or(ServeError::ShuttingDown)
    }

    /// Accepts every query of `queries` or none: a batch is refused whole, before any of it is
    /// queued, when it does not fit in the capacity left or one query has the wrong length.
    pub fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        self.submit_cancellable(queries).map(|(tickets, _)| tickets)
    }

    /// As [`submit_all`](Self::submit_all), with the handle that abandons the queries: what
    /// has not gone to a worker is dropped and a batch of nothing but abandoned queries is
    /// cancelled, each ticket then answered [`ServeError::Cancelled`].
    pub fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError> {
        if let Some(bad) = queries.iter().find(|q| q.len() != self.input_len) {
            return Err(ServeError::BadInput { expected: self.input_len, actual: bad.len() });
        }
        let Some(submissions) = &self.submissions else {
            return Err(ServeError::ShuttingDown);
        };
        let count = queries.len();
        let before = self.in_flight.fetch_add(count, Ordering::AcqRel);
        if before + count > self.capacity {
            self.in_flight.fetch_sub(count, Ordering::AcqRel);
            return Err(ServeError::Overloaded { in_flight: before });
        }
        let abandoned = Cancel::default();
        let mut tickets = Vec::with_capacity(count);
        for (sent, query) in queries.into_iter().enumerate() {
            let (reply, ticket) = crossbeam_channel::bounded(1);
            let submission = Submission { query, reply, abandoned: abandoned.clone(), arrived: Instant::now() };
            if submissions.send(submission).is_err() {
                // Only when the scheme's thread has died: what was sent is answered by it or
                // dropped with it; release the slots of the rest.
                self.in_flight.fetch_sub(count - sent, Ordering::AcqRel);
                return Err(ServeError::ShuttingDown);
            }
            tickets.push(ticket);
        }
        Ok((tickets, abandoned))
    }

    /// Where each of the scheme's workers runs, in index order.
    pub fn worker_locations(&self) -> &[String] {
        &self.locations
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The scheme's counts so far, as its thread last published them.
    pub fn stats(&self) -> Stats {
        self.live.read()
    }

    /// Closes admission and waits for the scheme to answer everything it accepted.
    pub fn stop(&mut self) -> Stats {
        drop(self.submissions.take());
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts one query's result, releases its admission slot and sends the result. The slot is
/// released first, so a client holding its answer never sees the query still in flight; the
/// sender is consumed, so the ticket disconnects with its one answer. The client may have
/// stopped waiting; the result is still given.
pub(crate) fn answer(
    in_flight: &AtomicUsize,
    stats: &mut Stats,
    reply: Sender<Result<Answer, ServeError>>,
    result: Result<Answer, ServeError>,
) {
    match result {
        Ok(_) => stats.answered += 1,
        Err(ServeError::Cancelled) => stats.cancelled += 1,
        Err(_) => stats.errors += 1,
    }
    in_flight.fetch_sub(1, Ordering::AcqRel);
    let _ = reply.send(result);
    drop(reply);
}

/// The abandonment flags of `submissions`, each once (the queries of one request share one).
pub(crate) fn abandonments(submissions: &[Submission]) -> Vec<Cancel> {
    let mut flags: Vec<Cancel> = Vec::new();
    for submission in submissions {
        if !flags.iter().any(|f| f.same(&submission.abandoned)) {
            flags.push(submission.abandoned.clone());
        }
    }
    flags
}

/// Whether everyone who waits for a batch's answers has gone (`flags`: [`abandonments`]).
pub(crate) fn all_abandoned(flags: &[Cancel]) -> bool {
    !flags.is_empty() && flags.iter().all(Cancel::is_cancelled)
}

/// Takes out of `pending` the batches nobody waits for any more (`flags`: a batch's
/// [`abandonments`]), for the scheme to cancel and answer [`ServeError::Cancelled`].
pub(crate) fn take_abandoned<B>(pending: &mut HashMap<u64, B>, flags: impl Fn(&B) -> &[Cancel]) -> Vec<B> {
    let ids: Vec<u64> = pending.iter().filter(|(_, b)| all_abandoned(flags(b))).map(|(&id, _)| id).collect();
    ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
}

/// Triton's dynamic batcher: queries gather until a batch is full, or until its oldest query
/// has waited the maximum queue delay, or until admission closes.
pub(crate) struct Batcher {
    forming: Vec<Submission>,
    since: Option<Instant>,
    /// Queries in a full batch.
    max_queries: usize,
    max_delay: Duration,
}

impl Batcher {
    pub fn new(max_queries: usize, max_delay: Duration) -> Self {
        Batcher { forming: Vec::new(), since: None, max_queries: max_queries.max(1), max_delay }
    }

    pub fn push(&mut self, submission: Submission) {
        self.since.get_or_insert_with(Instant::now);
        self.forming.push(submission);
    }

    /// Whether a batch should go now (`closing`: admission has closed, send what is left).
    pub fn due(&self, now: Instant, closing: bool) -> bool {
        !self.forming.is_empty()
            && (closing
                || self.forming.len() >= self.max_queries
                || self.since.is_some_and(|t| now >= t + self.max_delay))
    }

    /// When the forming batch's delay runs out.
    pub fn wake(&self) -> Option<Instant> {
        self.since.map(|t| t + self.max_delay)
    }

    pub fn is_empty(&self) -> bool {
        self.forming.is_empty()
    }

    /// Takes out the queries nobody waits for any more, to be answered
    /// [`ServeError::Cancelled`] instead of sent.
    pub fn take_abandoned(&mut self) -> Vec<Submission> {
        if !self.forming.iter().any(|s| s.abandoned.is_cancelled()) {
            return Vec::new();
        }
        let (abandoned, kept) = std::mem::take(&mut self.forming).into_iter().partition(|s| s.abandoned.is_cancelled());
        self.forming = kept;
        if self.forming.is_empty() {
            self.since = None;
        }
        abandoned
    }

    /// The next batch: up to a full batch of the oldest queries. What is left waits anew.
    /// Their waits since they were accepted are added to `stats`.
    pub fn take(&mut self, stats: &mut Stats) -> Vec<Submission> {
        let rest = self.forming.split_off(self.forming.len().min(self.max_queries));
        let batch = std::mem::replace(&mut self.forming, rest);
        let now = Instant::now();
        self.since = (!self.forming.is_empty()).then_some(now);
        stats.queued_queries += batch.len() as u64;
        stats.queue_ns += batch.iter().map(|s| now.saturating_duration_since(s.arrived).as_nanos() as u64).sum::<u64>();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(abandoned: &Cancel, value: f32) -> Submission {
        Submission {
            query: vec![value],
            reply: crossbeam_channel::bounded(1).0,
            abandoned: abandoned.clone(),
            arrived: Instant::now(),
        }
    }

    #[test]
    fn abandoned_queries_leave_the_forming_batch_and_a_batch_is_abandoned_when_all_its_requests_are() {
        let (gone, waiting) = (Cancel::default(), Cancel::default());
        let mut batcher = Batcher::new(8, Duration::from_secs(1));
        for (flag, value) in [(&gone, 0.0), (&waiting, 1.0), (&gone, 2.0)] {
            batcher.push(submission(flag, value));
        }
        assert!(batcher.take_abandoned().is_empty(), "nobody has gone yet");
        let flags = abandonments(&batcher.forming);
        assert_eq!(flags.len(), 2, "one flag per request");
        gone.cancel();
        assert!(!all_abandoned(&flags));
        let dropped: Vec<f32> = batcher.take_abandoned().iter().map(|s| s.query[0]).collect();
        assert_eq!(dropped, [0.0, 2.0]);
        let mut stats = Stats::default();
        assert_eq!(batcher.take(&mut stats).iter().map(|s| s.query[0]).collect::<Vec<_>>(), [1.0]);
        assert_eq!(stats.queued_queries, 1);
        waiting.cancel();
        assert!(all_abandoned(&flags));
        assert!(!all_abandoned(&[]), "a batch of no request is not abandoned");
    }
}
