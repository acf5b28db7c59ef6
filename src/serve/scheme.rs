//! What the front ends (`serve-bench`, the HTTP server) need of a serving scheme, so that the
//! coded coordinator and every baseline are driven the same way.

use super::baseline::Baseline;
use super::coordinator::{Coordinator, ServeError, Stats, Ticket};

/// A running serving scheme: admission up to a capacity, one answer or error per accepted
/// query, graceful shutdown.
pub trait Scheme: Send + Sync {
    /// Accepts `query` (or refuses it at once, with nothing queued); its answer arrives on the
    /// returned ticket.
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError>;
    /// Accepts all of `queries` or none of them.
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError>;
    /// Queries accepted and not yet answered.
    fn in_flight(&self) -> usize;
    /// Stops accepting queries, answers everything accepted, and returns the books.
    fn shutdown(self: Box<Self>) -> Stats;
}

impl Scheme for Coordinator {
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        Coordinator::submit(self, query)
    }
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        Coordinator::submit_all(self, queries)
    }
    fn in_flight(&self) -> usize {
        Coordinator::in_flight(self)
    }
    fn shutdown(self: Box<Self>) -> Stats {
        Coordinator::shutdown(*self)
    }
}

impl Scheme for Baseline {
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        Baseline::submit(self, query)
    }
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        Baseline::submit_all(self, queries)
    }
    fn in_flight(&self) -> usize {
        Baseline::in_flight(self)
    }
    fn shutdown(self: Box<Self>) -> Stats {
        Baseline::shutdown(*self)
    }
}
