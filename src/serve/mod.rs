//! The serving runtime: a [`Coordinator`] that batches queries into groups, has every worker
//! form its coded queries on its own device and answer a whole batch with one forward pass,
//! and decodes from the first `N - S` answers; the baselines users compare it with
//! ([`Baseline`]: uncoded, replication, hedged requests), batched the same way, all behind one
//! [`Scheme`] interface; the fault models of [`faults`]; model replicas and their placement on
//! the box's devices ([`replica`], [`pool`]); the `serve-bench` workload ([`bench`]) and the
//! HTTP front end ([`http`]).

pub mod answer;
pub mod baseline;
pub mod batch;
pub mod bench;
pub mod coordinator;
pub mod faults;
mod front;
pub mod grpc;
pub mod http;
mod lag;
pub mod load;
pub mod locating;
pub mod parm;
pub mod pool;
pub mod remote;
pub mod replica;
pub mod reputation;
pub mod scheme;
#[cfg(test)]
mod testing;
pub mod trace;
pub mod v2;
pub mod worker;

pub use answer::{Answer, CodingError, ServeError, Stats, Ticket, WorkerStats};
pub use baseline::{Baseline, BaselineConfig, Policy};
pub use batch::{Coding, Dispatch, FormError, Part, Segment, Work};
pub use bench::{Arrivals, ByzantineBooks, Liars, RepeatedReport, SchemeReport, ServeBenchConfig, Spread, summarize};
pub use coordinator::{Codec, Coordinator, CoordinatorConfig, DEFAULT_DECODE_GRACE, HEDGE_HISTORY};
pub use faults::{FaultError, FaultFileError, FaultPlan, Latency, Outcome, RandomSlowdown, WorkerFaults};
pub use locating::{Learning, LocatorState};
pub use pool::{Placement, PlacementError};
pub use remote::{Endpoint, EndpointError, Protocol, RemoteConfig, RemoteWorker};
pub use scheme::{Privacy, Scheme, SchemeConfig, SchemeKind};
pub use trace::{BatchEvent, BatchTrace};
pub use worker::{Cancel, LocalWorker, Request, Response, ServedModel, Tamper, Worker, WorkerError, sign_flip};
