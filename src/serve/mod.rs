//! The serving runtime (in progress): a [`Coordinator`] that groups queries, codes them, sends
//! them to `N` [`Worker`]s and decodes from the first `N - S` answers, under the fault models
//! of [`faults`]. The baselines (uncoded, replication, hedged, ParM), `serve-bench` and the
//! HTTP front end come next.

pub mod baseline;
pub mod bench;
pub mod coordinator;
pub mod faults;
mod front;
pub mod worker;

pub use baseline::{Baseline, BaselineConfig, Policy};
pub use bench::{Arrivals, SchemeReport, ServeBenchConfig};
pub use coordinator::{Answer, Coordinator, CoordinatorConfig, ServeError, Stats, Ticket};
pub use faults::{FaultError, FaultPlan, Latency, Outcome, RandomSlowdown, WorkerFaults};
pub use worker::{HostModel, LocalWorker, Request, Response, Worker, WorkerError};
