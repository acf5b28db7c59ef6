//! The front every scheme shares: admission up to a capacity, a ticket per accepted query,
//! and the thread that owns the scheme's state, joined on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::coordinator::{Answer, ServeError, Stats, Ticket};

/// An accepted query and where its result goes.
pub(crate) struct Submission {
    pub query: Vec<f32>,
    pub reply: Sender<Result<Answer, ServeError>>,
}

pub(crate) struct Front {
    submissions: Option<Sender<Submission>>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    input_len: usize,
    thread: Option<JoinHandle<Stats>>,
}

impl Front {
    /// Starts the scheme's thread, `run(submissions, in_flight)`, which must answer every
    /// submission exactly once (through [`answer`]) and return when the submissions close.
    pub fn spawn(
        name: &str,
        capacity: usize,
        input_len: usize,
        run: impl FnOnce(Receiver<Submission>, Arc<AtomicUsize>) -> Stats + Send + 'static,
    ) -> Result<Self, String> {
        let (submissions, incoming) = crossbeam_channel::unbounded();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(incoming, counter))
            .map_err(|e| e.to_string())?;
        Ok(Front { submissions: Some(submissions), in_flight, capacity, input_len, thread: Some(thread) })
    }

    /// Accepts `query` (or refuses it at once, with nothing queued).
    pub fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        if query.len() != self.input_len {
            return Err(ServeError::BadInput { expected: self.input_len, actual: query.len() });
        }
        let Some(submissions) = &self.submissions else {
            return Err(ServeError::ShuttingDown);
        };
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ServeError::Overloaded { in_flight: before });
        }
        let (reply, ticket) = crossbeam_channel::bounded(1);
        if submissions.send(Submission { query, reply }).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ServeError::ShuttingDown);
        }
        Ok(ticket)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
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

/// Sends one query's result, counts it, and releases its admission slot. The client may have
/// stopped waiting; the result is still given.
pub(crate) fn answer(
    in_flight: &AtomicUsize,
    stats: &mut Stats,
    reply: Sender<Result<Answer, ServeError>>,
    result: Result<Answer, ServeError>,
) {
    if result.is_ok() {
        stats.answered += 1;
    } else {
        stats.errors += 1;
    }
    let _ = reply.send(result);
    in_flight.fetch_sub(1, Ordering::AcqRel);
}
