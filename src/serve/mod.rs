//! The serving runtime: a [`Coordinator`] that groups queries, codes them, sends them to `N`
//! [`Worker`]s and decodes from the first `N - S` answers; the baselines users compare it with
//! ([`Baseline`]: uncoded, replication, hedged requests), all behind one [`Scheme`] interface;
//! the fault models of [`faults`]; model replicas for local workers ([`replica`]); the
//! `serve-bench` workload ([`bench`]) and the HTTP front end ([`http`]).

pub mod baseline;
pub mod bench;
pub mod coordinator;
pub mod faults;
mod front;
pub mod http;
pub mod replica;
pub mod scheme;
pub mod worker;

pub use baseline::{Baseline, BaselineConfig, Policy};
pub use bench::{Arrivals, SchemeReport, ServeBenchConfig};
pub use coordinator::{Answer, Codec, Coordinator, CoordinatorConfig, ServeError, Stats, Ticket};
pub use faults::{FaultError, FaultFileError, FaultPlan, Latency, Outcome, RandomSlowdown, WorkerFaults};
pub use scheme::{Scheme, SchemeConfig, SchemeKind};
pub use worker::{Cancel, HostModel, LocalWorker, Request, Response, Tamper, Worker, WorkerError, sign_flip};
