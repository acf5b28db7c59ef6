//! What the front ends (`serve-bench`, the HTTP server) need of a serving scheme, so that the
//! coded coordinator and every baseline are driven the same way.

use std::sync::Arc;
use std::time::Duration;

use super::answer::{ServeError, Stats, Ticket};
use super::baseline::{Baseline, BaselineConfig, Policy};
use super::coordinator::{Codec, Coordinator, CoordinatorConfig};
use super::faults::FaultPlan;
use super::locating::{Learning, LocatorState};
use super::parm::{Parm, ParmConfig};
use super::worker::{Cancel, Worker};
use crate::kernels::privacy::DEFAULT_MASK_SIGMA;
use crate::kernels::{Calibration, Code, CodeParams, Locator, MaskPlacement, NodeFamily};

/// A running serving scheme: admission up to a capacity, one answer or error per accepted
/// query, graceful shutdown.
pub trait Scheme: Send + Sync {
    /// Accepts `query` (or refuses it at once, with nothing queued); its answer arrives on the
    /// returned ticket.
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError>;
    /// Accepts all of `queries` or none of them.
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError>;
    /// As [`submit_all`](Self::submit_all), with the handle to call when nobody waits for the
    /// answers any more: the queries not sent yet are dropped, a batch of nothing else is
    /// cancelled, and each ticket gets [`ServeError::Cancelled`].
    fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError>;
    /// Queries accepted and not yet answered.
    fn in_flight(&self) -> usize;
    /// Stops accepting queries, answers everything accepted, and returns the books.
    fn shutdown(self: Box<Self>) -> Stats;
    /// The books so far, without the batch timelines (what `/metrics` exports).
    fn stats(&self) -> Stats;
    /// The Byzantine locator in use (coded schemes with `A > 0` only).
    fn locator_state(&self) -> Option<LocatorState> {
        None
    }
    /// Where each of its workers runs ([`Worker::location`](super::Worker::location)), in
    /// index order: `/metrics` maps the per-worker series to machines by it.
    fn worker_locations(&self) -> Vec<String>;
}

impl Scheme for Coordinator {
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        Coordinator::submit(self, query)
    }
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        Coordinator::submit_all(self, queries)
    }
    fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError> {
        Coordinator::submit_cancellable(self, queries)
    }
    fn in_flight(&self) -> usize {
        Coordinator::in_flight(self)
    }
    fn stats(&self) -> Stats {
        Coordinator::stats(self)
    }
    fn shutdown(self: Box<Self>) -> Stats {
        Coordinator::shutdown(*self)
    }
    fn locator_state(&self) -> Option<LocatorState> {
        Some(self.locator_state()).filter(|_| self.byzantine() > 0)
    }
    fn worker_locations(&self) -> Vec<String> {
        Coordinator::worker_locations(self).to_vec()
    }
}

impl Scheme for Parm {
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        Parm::submit(self, query)
    }
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        Parm::submit_all(self, queries)
    }
    fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError> {
        Parm::submit_cancellable(self, queries)
    }
    fn in_flight(&self) -> usize {
        Parm::in_flight(self)
    }
    fn stats(&self) -> Stats {
        Parm::stats(self)
    }
    fn shutdown(self: Box<Self>) -> Stats {
        Parm::shutdown(*self)
    }
    fn worker_locations(&self) -> Vec<String> {
        Parm::worker_locations(self).to_vec()
    }
}

impl Scheme for Baseline {
    fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        Baseline::submit(self, query)
    }
    fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        Baseline::submit_all(self, queries)
    }
    fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError> {
        Baseline::submit_cancellable(self, queries)
    }
    fn in_flight(&self) -> usize {
        Baseline::in_flight(self)
    }
    fn stats(&self) -> Stats {
        Baseline::stats(self)
    }
    fn shutdown(self: Box<Self>) -> Stats {
        Baseline::shutdown(*self)
    }
    fn worker_locations(&self) -> Vec<String> {
        Baseline::worker_locations(self).to_vec()
    }
}

/// The schemes `serve` and `serve-bench` offer: how many workers each takes and how it is
/// built over them, in one place so that both compare the same things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemeKind {
    /// Berrut-coded groups: K queries on K + S workers, decoded from the first K answers.
    Approxifer,
    /// Each query on one of K workers.
    Uncoded,
    /// Each query on `copies` of copies x K workers; the first answer wins.
    Replication,
    /// Each query on one of K workers, and on a second after the hedge delay.
    Hedged,
    /// ParM: K workers on the raw queries of a group and one on their sum with a parity
    /// model, a missing answer rebuilt by subtraction (S = 1). Its workers answer logits.
    Parm,
}

/// Masks mixed into ApproxIFER's groups so that `colluders` (`T`) workers together see the
/// queries under noise ([`crate::kernels::privacy`]); `colluders = 0`: none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Privacy {
    pub colluders: usize,
    pub placement: MaskPlacement,
    /// The masks' standard deviation, in the units of the queries.
    pub sigma: f64,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy { colluders: 0, placement: MaskPlacement::default(), sigma: DEFAULT_MASK_SIGMA }
    }
}

/// ApproxIFER's code for `config`: the fewest workers its `K`, `S`, `A` and `T` allow (one more
/// where a worker would otherwise see a query unmasked), the authors' worker nodes.
fn approxifer_code(config: &SchemeConfig) -> Result<Code, crate::kernels::Error> {
    let (k, s, a, privacy) = (config.k, config.stragglers, config.byzantine, config.privacy);
    let n = CodeParams::workers_needed(k + privacy.colluders, s, a);
    Code::with_masked_workers(
        CodeParams::builder(k, n)
            .stragglers(s)
            .byzantine(a)
            .privacy(privacy.colluders)
            .masks(privacy.placement)
            .nodes(NodeFamily::Authors),
    )
}

/// What building a scheme takes besides its workers.
#[derive(Clone, Debug)]
pub struct SchemeConfig {
    /// Queries per coded group, and the baselines' worker count (replication: `copies x K`).
    pub k: usize,
    /// Workers a coded group can do without: `N = K + S` (or `2K + 2A + S - 1` with `A > 0`).
    pub stragglers: usize,
    /// Workers a coded group's answers may lie about (`A`), and how they are found.
    pub byzantine: usize,
    pub locator: Locator,
    /// Calibrations of the partial groups' codes ([`CoordinatorConfig::partial_calibrations`]).
    pub partial_calibrations: Vec<Arc<Calibration>>,
    /// Learn a calibrated locator from traffic ([`CoordinatorConfig::learning`]).
    pub learning: Option<Learning>,
    /// Masks against colluding workers (ApproxIFER only).
    pub privacy: Privacy,
    pub copies: usize,
    /// When hedged requests send their backup.
    pub hedge_after: Duration,
    /// When the coordinator re-sends a late group's coded queries
    /// ([`CoordinatorConfig::hedge_after`]).
    pub coded_hedge_after: Option<Duration>,
    pub input_len: usize,
    pub output_len: usize,
    /// The most groups (coded) or queries (baselines) in one batch: each worker's forward pass
    /// then takes at most this many rows, whichever the scheme.
    pub max_batch: usize,
    /// A batch that is not full is sent this long after its oldest query arrived.
    pub max_queue_delay: Duration,
    /// The coded schemes' queue delay (`None`: `max_queue_delay`). A coded batch costs every
    /// worker of the group a forward pass where an uncoded one costs one worker, so at low
    /// load a longer delay buys fewer, fuller batches: the redundancy, not `N` times the
    /// fixed cost of a batch, is then what coding costs.
    pub coded_queue_delay: Option<Duration>,
    /// How long ApproxIFER waits for a decodable batch's last answers
    /// ([`CoordinatorConfig::decode_grace`]).
    pub decode_grace: f64,
    pub deadline: Duration,
    pub capacity: usize,
    pub faults: Option<(FaultPlan, u64)>,
    pub codec: Codec,
    /// ApproxIFER keeps the timelines of its slowest batches that took at least this long
    /// ([`CoordinatorConfig::trace_slower_than`]).
    pub trace_slower_than: Option<Duration>,
}

impl SchemeKind {
    /// The name reports and `/health` use.
    pub fn name(self) -> &'static str {
        match self {
            SchemeKind::Approxifer => "approxifer",
            SchemeKind::Uncoded => "uncoded",
            SchemeKind::Replication => "replication",
            SchemeKind::Hedged => "hedged",
            SchemeKind::Parm => "parm",
        }
    }

    /// How many workers the scheme runs on.
    pub fn workers(self, config: &SchemeConfig) -> usize {
        match self {
            SchemeKind::Approxifer => approxifer_code(config).map_or_else(
                |_| {
                    CodeParams::workers_needed(config.k + config.privacy.colluders, config.stragglers, config.byzantine)
                },
                |code| code.params().workers(),
            ),
            SchemeKind::Parm => config.k + 1,
            SchemeKind::Replication => config.copies * config.k,
            SchemeKind::Uncoded | SchemeKind::Hedged => config.k,
        }
    }

    /// How long the scheme's batches wait for queries: the coded schemes' own delay where one
    /// is set.
    pub fn queue_delay(self, config: &SchemeConfig) -> Duration {
        match self {
            SchemeKind::Approxifer | SchemeKind::Parm => config.coded_queue_delay.unwrap_or(config.max_queue_delay),
            SchemeKind::Uncoded | SchemeKind::Replication | SchemeKind::Hedged => config.max_queue_delay,
        }
    }

    /// Starts the scheme over `workers` ([`workers`](Self::workers) of them).
    pub fn start(self, config: &SchemeConfig, workers: Vec<Arc<dyn Worker>>) -> anyhow::Result<Box<dyn Scheme>> {
        let policy = match self {
            SchemeKind::Approxifer => {
                let code = approxifer_code(config)?;
                let coordinator = CoordinatorConfig {
                    code,
                    input_len: config.input_len,
                    output_len: config.output_len,
                    max_batch: config.max_batch,
                    max_queue_delay: self.queue_delay(config),
                    deadline: config.deadline,
                    capacity: config.capacity,
                    faults: config.faults.clone(),
                    codec: config.codec.clone(),
                    hedge_after: config.coded_hedge_after,
                    decode_grace: config.decode_grace,
                    locator: config.locator.clone(),
                    partial_calibrations: config.partial_calibrations.clone(),
                    learning: config.learning.clone(),
                    mask_sigma: config.privacy.sigma,
                    trace_slower_than: config.trace_slower_than,
                };
                return Ok(Box::new(Coordinator::start(coordinator, workers).map_err(anyhow::Error::msg)?));
            }
            SchemeKind::Parm => {
                let parm = ParmConfig {
                    k: config.k,
                    input_len: config.input_len,
                    output_len: config.output_len,
                    max_batch: config.max_batch,
                    max_queue_delay: self.queue_delay(config),
                    deadline: config.deadline,
                    capacity: config.capacity,
                    faults: config.faults.clone(),
                };
                return Ok(Box::new(Parm::start(parm, workers).map_err(anyhow::Error::msg)?));
            }
            SchemeKind::Uncoded => Policy::Uncoded,
            SchemeKind::Replication => Policy::Replication { copies: config.copies },
            SchemeKind::Hedged => Policy::Hedged { after: config.hedge_after },
        };
        let baseline = BaselineConfig {
            policy,
            input_len: config.input_len,
            output_len: config.output_len,
            max_batch: config.max_batch,
            max_queue_delay: config.max_queue_delay,
            deadline: config.deadline,
            capacity: config.capacity,
            faults: config.faults.clone(),
        };
        Ok(Box::new(Baseline::start(baseline, workers).map_err(anyhow::Error::msg)?))
    }
}
