//! `approxifer serve`'s and `approxifer worker`'s HTTP front end: the Open Inference Protocol
//! (KServe v2) REST API over any [`Scheme`] (the coded coordinator or a baseline), Prometheus
//! `/metrics`, and a graceful shutdown that answers or rejects every accepted request.
//!
//! v2 routes: `GET /v2` (server metadata), `/v2/health/live`, `/v2/health/ready`,
//! `GET /v2/models/{name}[/versions/{v}]` (metadata), `.../ready`, and
//! `POST /v2/models/{name}[/versions/{v}]/infer`, with JSON or binary tensors
//! ([`super::v2`]). A request's first dimension is its batch of queries; it is admitted whole or
//! refused whole, and answered whole or failed whole (the protocol has no per-row errors). The
//! output's parameters say which rows were decoded approximately: `approximate` (any) and
//! `approximate_rows` (their indices, comma-separated).
//!
//! `POST /v1/predict` stays, the project's compact form for `curl`: `{"inputs": [[...], ...]}`
//! (one row of `input_len` numbers per query) or `{"inputs": {"shape": [B, ...], "data": [...]}}`,
//! answered `{"predictions": [{"output": [...], "approximate": false}, ...]}` in order, a query
//! that failed getting `{"error": ..., "code": ...}` in its place; `GET /health` reports the
//! scheme and what is in flight.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::answer::{Answer, ServeError, Stats, WorkerStats};
use super::locating::LocatorState;
use super::scheme::Scheme;
use super::v2;
use super::worker::Cancel;

/// The model a server hosts, as the protocol's metadata describes it.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// What clients call it.
    pub name: String,
    /// The one version served.
    pub version: String,
    pub platform: String,
    pub input_name: String,
    /// One query's dimensions (the batch dimension excluded).
    pub input_shape: Vec<usize>,
    pub output_name: String,
    /// Values per prediction.
    pub output_len: usize,
}

impl ModelSpec {
    /// A model called `name` taking queries of `input_shape` and answering `output_len` values,
    /// with tensors named `input` and `output`, version `1`.
    pub fn new(name: impl Into<String>, input_shape: Vec<usize>, output_len: usize) -> Self {
        ModelSpec {
            name: name.into(),
            version: "1".into(),
            platform: "approxifer".into(),
            input_name: "input".into(),
            input_shape,
            output_name: "output".into(),
            output_len,
        }
    }

    /// Values per query.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    pub(super) fn metadata(&self) -> v2::ModelMetadata {
        let dims = |shape: &[usize]| std::iter::once(-1).chain(shape.iter().map(|&d| d as i64)).collect();
        v2::ModelMetadata {
            name: self.name.clone(),
            versions: Some(vec![self.version.clone()]),
            platform: Some(self.platform.clone()),
            inputs: vec![v2::TensorMetadata {
                name: self.input_name.clone(),
                datatype: "FP32".into(),
                shape: dims(&self.input_shape),
            }],
            outputs: vec![v2::TensorMetadata {
                name: self.output_name.clone(),
                datatype: "FP32".into(),
                shape: dims(&[self.output_len]),
            }],
        }
    }

    /// The configuration Triton's model configuration extension answers, for requests of up
    /// to `max_batch` queries.
    pub(super) fn config(&self, max_batch: usize) -> v2::ModelConfig {
        let dims = |shape: &[usize]| shape.iter().map(|&d| d as i64).collect();
        v2::ModelConfig {
            name: self.name.clone(),
            platform: self.platform.clone(),
            backend: self.platform.clone(),
            max_batch_size: i32::try_from(max_batch).unwrap_or(i32::MAX),
            input: vec![v2::ConfigInput {
                name: self.input_name.clone(),
                data_type: "TYPE_FP32".into(),
                format: "FORMAT_NONE".into(),
                dims: dims(&self.input_shape),
            }],
            output: vec![v2::ConfigOutput {
                name: self.output_name.clone(),
                data_type: "TYPE_FP32".into(),
                dims: dims(&[self.output_len]),
                label_filename: String::new(),
            }],
        }
    }
}

/// What the server reports about itself and how it bounds requests.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The scheme's name (`approxifer`, `uncoded`, ...), reported by `/health`.
    pub scheme: String,
    pub model: ModelSpec,
    /// The most queries in one request; at most the scheme's capacity.
    pub max_batch: usize,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a stop waits for connections to finish before it stops serving them: a client
    /// that went away without closing its connection (a partitioned host, an HTTP/2 client that
    /// never acknowledges the GOAWAY) must not hold the stop forever. At least the scheme's
    /// deadline, so that every accepted request can still be answered.
    pub drain: std::time::Duration,
}

/// The inputs of a request: rows, or a tensor with its shape.
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    Rows(Vec<Vec<f32>>),
    Tensor { shape: Vec<usize>, data: Vec<f32> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: Inputs,
}

#[derive(Serialize)]
struct PredictResponse {
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Prediction {
    Answer { output: Vec<f32>, approximate: bool },
    Error { error: String, code: &'static str },
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    code: &'static str,
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    scheme: &'a str,
    input_len: usize,
    output_len: usize,
    in_flight: usize,
}

/// A refusal of the whole request, or one query's failure: a status, a stable code for
/// programs and a sentence for people.
pub(super) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub(super) fn bad_input(message: String) -> Self {
        Failure { status: StatusCode::BAD_REQUEST, code: "bad_input", message }
    }
}

impl From<ServeError> for Failure {
    fn from(error: ServeError) -> Self {
        let (status, code) = match error {
            ServeError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ServeError::BadInput { .. } => (StatusCode::BAD_REQUEST, "bad_input"),
            ServeError::DeadlineMissed { .. } => (StatusCode::GATEWAY_TIMEOUT, "deadline_missed"),
            ServeError::WorkersUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "workers_unavailable"),
            ServeError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            // Only ever sent to a client that has gone (nginx's 499 has no standard name).
            ServeError::Cancelled => (StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "cancelled"),
            ServeError::Coding(_) => (StatusCode::INTERNAL_SERVER_ERROR, "coding_failed"),
        };
        Failure { status, code, message: error.to_string() }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let retry = matches!(self.code, "overloaded");
        let mut response = (self.status, Json(ErrorBody { error: self.message, code: self.code })).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `exact`, `approximate`, or the failure's code.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LocatorLabels {
    locator: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueriesLabels {
    queries: usize,
}

/// A worker and where it runs: the per-worker series carry the index alone, and this maps
/// it to a machine (the info-metric idiom: one series per worker, value 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerInfoLabels {
    worker: usize,
    location: String,
}

/// The server's Prometheus metrics.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    queries: Family<OutcomeLabels, Counter>,
    refusals: Family<OutcomeLabels, Counter>,
    latency: Histogram,
    in_flight: Gauge,
    locator: LocatorMetrics,
    scheme: SchemeMetrics,
}

/// The Byzantine locator's state (coded schemes with `A > 0`), read at each scrape.
#[derive(Default)]
struct LocatorMetrics {
    active: Family<LocatorLabels, Gauge>,
    observed_groups: Gauge,
    refits: Gauge,
    calibration_groups: Gauge,
    thresholds: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    short_positions: Family<WorkerLabels, Gauge>,
    suspected: Family<WorkerLabels, Gauge>,
    suspected_workers: Family<WorkerLabels, Gauge>,
    partial_refits: Family<QueriesLabels, Gauge>,
    partial_calibrated: Family<QueriesLabels, Gauge>,
}

impl LocatorMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("locator", "The Byzantine locator in use (1) by name", self.active.clone());
        registry.register(
            "locator_observed_groups",
            "Groups handed to the calibrated locator's learner (less the answers located in them)",
            self.observed_groups.clone(),
        );
        registry.register("locator_refits", "Calibrations fitted from traffic", self.refits.clone());
        registry.register(
            "locator_calibration_groups",
            "Honest groups the active calibration was fitted on",
            self.calibration_groups.clone(),
        );
        registry.register(
            "locator_threshold",
            "The active calibration's squared Mahalanobis threshold per worker position",
            self.thresholds.clone(),
        );
        registry.register(
            "locator_short_position",
            "1 for a worker position without enough honest answers among the groups learnt from",
            self.short_positions.clone(),
        );
        registry.register(
            "locator_suspected_position",
            "1 for a worker position the active calibration was fitted without: its answers are removed first",
            self.suspected.clone(),
        );
        registry.register(
            "locator_suspected_worker",
            "1 for a worker whose answers disagreed with the others' over many batches, wherever it was placed: they are removed from every group before locating",
            self.suspected_workers.clone(),
        );
        registry.register(
            "locator_partial_refits",
            "Calibrations fitted from traffic for the code of a partial group of this many queries",
            self.partial_refits.clone(),
        );
        registry.register(
            "locator_partial_calibrated",
            "1 for the code of partial groups of this many queries when a calibration (from the file or fitted from traffic) locates its liars; none: located robustly",
            self.partial_calibrated.clone(),
        );
    }

    fn set(&self, state: &LocatorState) {
        for name in ["calibrated", "robust", "paper"] {
            self.active.get_or_create(&LocatorLabels { locator: name }).set(i64::from(name == state.locator));
        }
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.observed_groups.set(count(state.observed_groups));
        self.refits.set(count(state.refits));
        self.calibration_groups.set(count(state.calibration_groups));
        self.thresholds.clear();
        for (worker, &threshold) in state.thresholds.iter().enumerate() {
            self.thresholds.get_or_create(&WorkerLabels { worker }).set(threshold);
        }
        flag(&self.short_positions, state.short_positions.iter().map(|&worker| WorkerLabels { worker }));
        flag(&self.suspected, state.suspected.iter().map(|&worker| WorkerLabels { worker }));
        flag(&self.suspected_workers, state.suspected_workers.iter().map(|&worker| WorkerLabels { worker }));
        for &(queries, refits) in &state.partial_refits {
            self.partial_refits.get_or_create(&QueriesLabels { queries }).set(count(refits));
        }
        flag(&self.partial_calibrated, state.partial_calibrated.iter().map(|&queries| QueriesLabels { queries }));
    }
}

/// Sets `family` to 1 for each of `labels`, and to nothing for the others.
fn flag<L: Clone + std::hash::Hash + Eq>(family: &Family<L, Gauge>, labels: impl IntoIterator<Item = L>) {
    family.clear();
    for label in labels {
        family.get_or_create(&label).set(1);
    }
}

/// The scheme's own counts (its [`Stats`]), read at each scrape: what the coordinator did to
/// answer (re-sent, covered, located, dropped), which the per-query counts do not show.
#[derive(Default)]
struct SchemeMetrics {
    batches: Counter,
    groups: Counter,
    decoded_groups: Counter,
    failed_groups: Counter,
    late_responses: Counter,
    hedged_requests: Counter,
    covered_parts: Counter,
    grace_expired: Counter,
    cancelled_queries: Counter,
    non_finite_answers: Counter,
    located_workers: Counter,
    decode_seconds: Counter<f64, AtomicU64>,
    workers: WorkerMetrics,
}

/// Per worker, its [`WorkerStats`]: which one straggles (busy seconds per answer, late
/// answers) or lies (located).
#[derive(Default)]
struct WorkerMetrics {
    requests: Family<WorkerLabels, Counter>,
    answers: Family<WorkerLabels, Counter>,
    late_answers: Family<WorkerLabels, Counter>,
    non_finite_rows: Family<WorkerLabels, Counter>,
    judged: Family<WorkerLabels, Counter>,
    located: Family<WorkerLabels, Counter>,
    busy_seconds: Family<WorkerLabels, Counter<f64, AtomicU64>>,
}

impl WorkerMetrics {
    fn register(&self, registry: &mut Registry) {
        let counts = [
            ("worker_requests", "Requests sent to each worker", &self.requests),
            ("worker_answers", "Answers each worker returned, on time or late", &self.answers),
            (
                "worker_late_answers",
                "Answers each worker returned after their batch was answered or failed",
                &self.late_answers,
            ),
            ("worker_non_finite_rows", "Rows holding NaN or infinity in each worker's answers", &self.non_finite_rows),
            ("worker_judged", "Groups whose answer from each worker the Byzantine locator judged", &self.judged),
            ("worker_located", "Groups whose answer from each worker the Byzantine locator removed", &self.located),
        ];
        for (name, help, family) in counts {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "worker_busy_seconds",
            "Time each worker spent on the requests it answered, each from when it could start it",
            self.busy_seconds.clone(),
        );
    }

    fn set(&self, workers: &[WorkerStats]) {
        for (worker, stats) in workers.iter().enumerate() {
            let labels = WorkerLabels { worker };
            let pairs = [
                (&self.requests, stats.requests),
                (&self.answers, stats.answers),
                (&self.late_answers, stats.late_answers),
                (&self.non_finite_rows, stats.non_finite_rows),
                (&self.judged, stats.judged),
                (&self.located, stats.located),
            ];
            for (family, value) in pairs {
                family.get_or_create(&labels).inner().store(value, Ordering::Relaxed);
            }
            let busy = stats.busy_ns as f64 * 1e-9;
            self.busy_seconds.get_or_create(&labels).inner().store(busy.to_bits(), Ordering::Relaxed);
        }
    }
}

impl SchemeMetrics {
    fn register(&self, registry: &mut Registry) {
        let counts = [
            ("batches", "Batches dispatched: of groups (coded schemes) or of queries", &self.batches),
            ("groups", "Groups dispatched (queries, for the uncoded schemes)", &self.groups),
            ("decoded_groups", "Groups answered (queries, for the uncoded schemes)", &self.decoded_groups),
            ("failed_groups", "Groups that got errors instead of answers", &self.failed_groups),
            (
                "late_responses",
                "Worker answers that came after their group was answered or failed",
                &self.late_responses,
            ),
            (
                "hedged_requests",
                "Requests re-sending a late batch's missing work to other workers",
                &self.hedged_requests,
            ),
            ("covered_parts", "Coded queries of lagging workers also given to others at dispatch", &self.covered_parts),
            (
                "grace_expired",
                "Batches decoded when their wait for their last answers ended, an answer still missing",
                &self.grace_expired,
            ),
            (
                "cancelled_queries",
                "Queries whose client went away before their answer: dropped before they went out, or their batch cancelled",
                &self.cancelled_queries,
            ),
            (
                "non_finite_answers",
                "Worker answers holding NaN or infinity, dropped on arrival",
                &self.non_finite_answers,
            ),
            ("located_workers", "Answers the Byzantine locator removed before decoding", &self.located_workers),
        ];
        for (name, help, counter) in counts {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "decode_seconds",
            "Time the coordinator spent locating and decoding",
            self.decode_seconds.clone(),
        );
        self.workers.register(registry);
    }

    fn set(&self, stats: &Stats) {
        let pairs = [
            (&self.batches, stats.batches),
            (&self.groups, stats.groups),
            (&self.decoded_groups, stats.decoded_groups),
            (&self.failed_groups, stats.failed_groups),
            (&self.late_responses, stats.late_responses),
            (&self.hedged_requests, stats.hedged_requests),
            (&self.covered_parts, stats.covered_parts),
            (&self.grace_expired, stats.grace_expired),
            (&self.cancelled_queries, stats.cancelled),
            (&self.non_finite_answers, stats.non_finite_answers),
            (&self.located_workers, stats.located_workers),
        ];
        for (counter, value) in pairs {
            counter.inner().store(value, Ordering::Relaxed);
        }
        self.decode_seconds.inner().store((stats.decode_ns as f64 * 1e-9).to_bits(), Ordering::Relaxed);
        self.workers.set(&stats.workers);
    }
}

impl Metrics {
    /// `locations`: where each of the scheme's workers runs ([`Scheme::worker_locations`]).
    fn new(locations: &[String]) -> Self {
        let mut registry = Registry::with_prefix("approxifer");
        let requests = Family::<RequestLabels, Counter>::default();
        let queries = Family::<OutcomeLabels, Counter>::default();
        let refusals = Family::<OutcomeLabels, Counter>::default();
        // 0.5 ms to about 16 s.
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let in_flight = Gauge::default();
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        registry.register(
            "queries",
            "Admitted queries by outcome: exact, approximate, or an error code",
            queries.clone(),
        );
        registry.register("refused_requests", "Predict requests refused whole, by error code", refusals.clone());
        registry.register("predict_latency_seconds", "Time to answer a predict request", latency.clone());
        registry.register("queries_in_flight", "Queries accepted and not yet answered", in_flight.clone());
        let locator = LocatorMetrics::default();
        locator.register(&mut registry);
        let scheme = SchemeMetrics::default();
        scheme.register(&mut registry);
        let info = Family::<WorkerInfoLabels, Gauge>::default();
        registry.register(
            "worker_info",
            "Where each worker runs (1 per worker): a remote server's model URL, or local and its device",
            info.clone(),
        );
        for (worker, location) in locations.iter().enumerate() {
            info.get_or_create(&WorkerInfoLabels { worker, location: location.clone() }).set(1);
        }
        Metrics { registry, requests, queries, refusals, latency, in_flight, locator, scheme }
    }

    fn request(&self, route: &'static str, status: StatusCode) {
        self.requests.get_or_create(&RequestLabels { route, status: status.as_u16() }).inc();
    }

    fn query(&self, outcome: &'static str) {
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The state every handler shares.
pub(super) struct App {
    /// Taken out, to be shut down, once the server has stopped.
    scheme: RwLock<Option<Box<dyn Scheme>>>,
    pub config: HttpConfig,
    metrics: Metrics,
    /// Set when shutdown begins: new requests are refused, `/health` reports `draining`.
    pub draining: AtomicBool,
    /// Inference requests answered and failed, for the statistics extension.
    inferences: Mutex<Inferences>,
}

/// Inference requests' outcomes and durations, every route's.
#[derive(Default)]
struct Inferences {
    success: v2::StatisticDuration,
    fail: v2::StatisticDuration,
    /// When the last one ended, in milliseconds since the Unix epoch.
    last_ms: u64,
}

impl App {
    /// Counts a call of `route` that ended with `status` (a refusal's code when refused whole),
    /// and its latency for inferences.
    pub(super) fn observe(
        &self,
        route: &'static str,
        status: StatusCode,
        refused: Option<&'static str>,
        started: Option<Instant>,
    ) {
        self.metrics.request(route, status);
        if let Some(code) = refused {
            self.metrics.refusals.get_or_create(&OutcomeLabels { outcome: code }).inc();
        }
        if let Some(started) = started {
            let took = started.elapsed();
            self.metrics.latency.observe(took.as_secs_f64());
            let mut inferences = self.inferences.lock().unwrap_or_else(PoisonError::into_inner);
            let outcome = if status.is_success() { &mut inferences.success } else { &mut inferences.fail };
            outcome.count += 1;
            outcome.ns += took.as_nanos() as u64;
            let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            inferences.last_ms = since_epoch.as_millis() as u64;
        }
    }

    fn in_flight(&self) -> usize {
        self.scheme.read().ok().and_then(|s| s.as_ref().map(|s| s.in_flight())).unwrap_or(0)
    }

    fn locator_state(&self) -> Option<LocatorState> {
        self.scheme.read().ok().and_then(|s| s.as_ref().and_then(|s| s.locator_state()))
    }

    fn stats(&self) -> Option<Stats> {
        self.scheme.read().ok().and_then(|s| s.as_ref().map(|s| s.stats()))
    }

    /// The repository index (Triton's model repository extension): the one model served,
    /// ready unless the server is shutting down; with `ready`, only if it is.
    pub(super) fn index(&self, ready: bool) -> Vec<v2::ModelIndex> {
        let spec = &self.config.model;
        let draining = self.draining.load(Ordering::SeqCst);
        let (state, reason) = if draining { ("UNAVAILABLE", "the server is shutting down") } else { ("READY", "") };
        let model = v2::ModelIndex {
            name: spec.name.clone(),
            version: spec.version.clone(),
            state: state.into(),
            reason: reason.into(),
        };
        if ready && draining { Vec::new() } else { vec![model] }
    }

    /// The served model's statistics (Triton's statistics extension): the requests' outcomes
    /// as every route saw them, the scheme's books for the rest.
    pub(super) fn statistics(&self) -> v2::ModelStatistics {
        let (success, fail, last_ms) = {
            let inferences = self.inferences.lock().unwrap_or_else(PoisonError::into_inner);
            (inferences.success, inferences.fail, inferences.last_ms)
        };
        let stats = self.stats().unwrap_or_default();
        let duration = |count: u64, ns: u64| v2::StatisticDuration { count, ns };
        let workers = |f: fn(&WorkerStats) -> u64| stats.workers.iter().map(f).sum::<u64>();
        v2::ModelStatistics {
            name: self.config.model.name.clone(),
            version: self.config.model.version.clone(),
            last_inference: last_ms,
            inference_count: stats.answered,
            execution_count: stats.batches,
            inference_stats: v2::InferStatistics {
                success,
                fail,
                queue: duration(stats.queued_queries, stats.queue_ns),
                compute_infer: duration(workers(|w| w.answers), workers(|w| w.busy_ns)),
                compute_output: duration(stats.batches, stats.decode_ns),
                ..v2::InferStatistics::default()
            },
            batch_stats: Vec::new(),
        }
    }
}

/// The routes of [`serve`], with the body limit every route shares.
fn router(app: Arc<App>) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}/stats", get(model_statistics))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_statistics_version))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_or_unload))
        .route("/v2/repository/models/{model}/unload", post(load_or_unload))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
        .route("/v1/predict", post(predict))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            Failure { status: StatusCode::NOT_FOUND, code: "not_found", message: "no such route".into() }
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Serves `scheme` on `listener` until `shutdown` completes; then stops accepting connections
/// and requests, lets every request in progress get its answers, shuts the scheme down and
/// returns its books.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scheme: Box<dyn Scheme>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Stats> {
    serve_v2(listener, None, scheme, config, shutdown).await
}

/// [`serve`], with the v2 gRPC service on `grpc` as well: one scheme, one set of metrics, one
/// shutdown for both.
pub async fn serve_v2(
    rest: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
    scheme: Box<dyn Scheme>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Stats> {
    if config.max_batch == 0 || config.model.input_len() == 0 {
        return Err(std::io::Error::other("max_batch and input_len must be at least 1"));
    }
    let metrics = Metrics::new(&scheme.worker_locations());
    let app = Arc::new(App {
        scheme: RwLock::new(Some(scheme)),
        config,
        metrics,
        draining: false.into(),
        inferences: Mutex::default(),
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let draining = app.clone();
    tokio::spawn(async move {
        shutdown.await;
        draining.draining.store(true, Ordering::SeqCst);
        let _ = stop.send(true);
    });
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|&stop| stop).await;
    };
    let rest = axum::serve(rest, router(app.clone())).with_graceful_shutdown(stopped(stopping.clone()));
    let grpc_stop = stopped(stopping.clone());
    let grpc = async {
        match grpc {
            Some(listener) => {
                super::grpc::server::serve(listener, app.clone(), grpc_stop).await.map_err(std::io::Error::other)
            }
            None => Ok(()),
        }
    };
    let drain = app.config.drain;
    let drained = async move {
        stopped(stopping).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        (rest, grpc) = async { tokio::join!(rest, grpc) } => {
            rest?;
            grpc?;
            // Every connection has closed, so every handler has returned with its answers.
        }
        // Connections still open this long after the stop are not waited for; whatever they
        // had admitted is answered by the scheme's shutdown below.
        () = drained => {}
    }
    let scheme = app.scheme.write().ok().and_then(|mut s| s.take());
    Ok(scheme.map(|s| s.shutdown()).unwrap_or_default())
}

async fn predict(State(app): State<Arc<App>>, body: Result<Json<PredictRequest>, JsonRejection>) -> Response {
    let started = Instant::now();
    let (response, refused) = match answer(&app, body).await {
        Ok(response) => (response, None),
        Err(failure) => {
            let code = failure.code;
            (failure.into_response(), Some(code))
        }
    };
    app.observe("/v1/predict", response.status(), refused, Some(started));
    response
}

/// Admits the request's queries and waits for their answers.
async fn answer(app: &App, body: Result<Json<PredictRequest>, JsonRejection>) -> Result<Response, Failure> {
    let request = body
        .map_err(|rejection| Failure {
            status: rejection.status(),
            code: "bad_request",
            message: rejection.body_text(),
        })?
        .0;
    let queries = rows(request.inputs, &app.config)?;
    let results = run(app, queries).await?;
    let mut status = StatusCode::OK;
    let predictions = results
        .into_iter()
        .map(|result| match result {
            Ok(Answer { output, approximate }) => Prediction::Answer { output, approximate },
            Err(failure) => {
                if status == StatusCode::OK {
                    status = failure.status;
                }
                Prediction::Error { error: failure.message, code: failure.code }
            }
        })
        .collect();
    Ok((status, Json(PredictResponse { predictions })).into_response())
}

/// Admits `queries` whole (or refuses them whole) and waits for each one's answer or failure,
/// counting the outcomes.
async fn run(app: &App, queries: Vec<Vec<f32>>) -> Result<Vec<Result<Answer, Failure>>, Failure> {
    if app.draining.load(Ordering::SeqCst) {
        return Err(ServeError::ShuttingDown.into());
    }
    let (tickets, abandon) = {
        let scheme = app.scheme.read().map_err(|_| Failure::from(ServeError::ShuttingDown))?;
        let scheme = scheme.as_ref().ok_or(ServeError::ShuttingDown)?;
        scheme.submit_cancellable(queries)?
    };
    // When the client goes away, the server drops this future at the await below: the guard
    // then abandons the queries, so the scheme stops working on them (what has not gone out
    // is dropped, a batch of nothing else is cancelled) and answers the tickets it holds.
    let guard = AbandonOnDrop(Some(abandon));
    // A ticket is a blocking channel: wait on the blocking pool, not on the async workers.
    let results = tokio::task::spawn_blocking(move || tickets.iter().map(|t| t.recv().ok()).collect::<Vec<_>>())
        .await
        .map_err(|e| Failure { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: e.to_string() })?;
    guard.disarm();
    Ok(results
        .into_iter()
        .map(|result| {
            let result = match result {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(error)) => Err(Failure::from(error)),
                None => Err(Failure {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: "the scheme dropped this query".into(),
                }),
            };
            app.metrics.query(match &result {
                Ok(answer) if answer.approximate => "approximate",
                Ok(_) => "exact",
                Err(failure) => failure.code,
            });
            result
        })
        .collect())
}

/// Abandons a request's queries when dropped before [`disarm`](Self::disarm): a handler
/// future dropped mid-wait is a client that went away.
struct AbandonOnDrop(Option<Cancel>);

impl AbandonOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(abandon) = &self.0 {
            abandon.cancel();
        }
    }
}

/// The request's queries as rows of `input_len` finite numbers, at most `max_batch` of them.
fn rows(inputs: Inputs, config: &HttpConfig) -> Result<Vec<Vec<f32>>, Failure> {
    let d = config.model.input_len();
    let rows = match inputs {
        Inputs::Rows(rows) => rows,
        Inputs::Tensor { shape, data } => {
            let per_row: Option<usize> = shape.iter().skip(1).try_fold(1usize, |n, &s| n.checked_mul(s));
            let batch = shape.first().copied().unwrap_or(0);
            if shape.len() < 2 || per_row != Some(d) || batch.checked_mul(d) != Some(data.len()) {
                return Err(Failure::bad_input(format!(
                    "a tensor of shape {shape:?} with {} values: expected shape [batch, ...] with {d} values per \
                     query and batch x {d} values",
                    data.len()
                )));
            }
            data.chunks_exact(d).map(<[f32]>::to_vec).collect()
        }
    };
    checked_rows(rows, config)
}

/// `rows` if there are 1 to `max_batch` of them, each of `input_len` finite numbers.
fn checked_rows(rows: Vec<Vec<f32>>, config: &HttpConfig) -> Result<Vec<Vec<f32>>, Failure> {
    let d = config.model.input_len();
    if rows.is_empty() {
        return Err(Failure::bad_input("no inputs".into()));
    }
    if rows.len() > config.max_batch {
        return Err(Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "batch_too_large",
            message: format!("{} queries in one request; at most {}", rows.len(), config.max_batch),
        });
    }
    for (i, row) in rows.iter().enumerate() {
        if row.len() != d {
            return Err(Failure::bad_input(format!("input {i} has {} values; the model takes {d}", row.len())));
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(Failure::bad_input(format!("input {i}, value {j} is not a finite 32-bit float")));
        }
    }
    Ok(rows)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let draining = app.draining.load(Ordering::SeqCst);
    let body = Health {
        status: if draining { "draining" } else { "serving" },
        scheme: &app.config.scheme,
        input_len: app.config.model.input_len(),
        output_len: app.config.model.output_len,
        in_flight: app.in_flight(),
    };
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let response = (status, Json(body)).into_response();
    app.metrics.request("/health", response.status());
    response
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.in_flight.set(i64::try_from(app.in_flight()).unwrap_or(i64::MAX));
    if let Some(state) = app.locator_state() {
        app.metrics.locator.set(&state);
    }
    if let Some(stats) = app.stats() {
        app.metrics.scheme.set(&stats);
    }
    let mut text = String::new();
    let response = match prometheus_client::encoding::text::encode(&mut text, &app.metrics.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => Failure { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: e.to_string() }
            .into_response(),
    };
    app.metrics.request("/metrics", response.status());
    response
}

/// A failure as the v2 protocol reports it: the status and `{"error": ...}`.
fn v2_failure(failure: Failure) -> Response {
    let retry = failure.code == "overloaded";
    let mut response = (failure.status, Json(v2::ErrorBody { error: failure.message })).into_response();
    if retry {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The model a route names, if it is the one served (any version of it when `version` is
/// `None`).
pub(super) fn hosted<'a>(app: &'a App, model: &str, version: Option<&str>) -> Result<&'a ModelSpec, Failure> {
    let spec = &app.config.model;
    if model != spec.name {
        return Err(Failure {
            status: StatusCode::NOT_FOUND,
            code: "unknown_model",
            message: format!("unknown model '{model}': this server hosts '{}'", spec.name),
        });
    }
    match version {
        Some(v) if v != spec.version && !v.is_empty() => Err(Failure {
            status: StatusCode::NOT_FOUND,
            code: "unknown_model",
            message: format!("model '{model}' has no version '{v}': it serves version {}", spec.version),
        }),
        _ => Ok(spec),
    }
}

async fn server_metadata(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/v2", StatusCode::OK);
    Json(serde_json::json!({
        "name": "approxifer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", v2::CLASSIFICATION, v2::MODEL_CONFIGURATION, v2::STATISTICS],
    }))
    .into_response()
}

/// The health answers carry their result twice: in the status, which the specification and
/// Triton's clients read, and as `{"live": true}` / `{"ready": ...}`, which KServe's client
/// parses (it fails on an empty body).
async fn live(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/v2/health/live", StatusCode::OK);
    Json(serde_json::json!({"live": true})).into_response()
}

/// Ready while accepting requests; 503 once draining.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let ready = !app.draining.load(Ordering::SeqCst);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    app.metrics.request("/v2/health/ready", status);
    (status, Json(serde_json::json!({"ready": ready}))).into_response()
}

async fn model_metadata(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    metadata_of(&app, &model, None)
}

async fn model_metadata_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata_of(&app, &model, Some(&version))
}

/// What `answer` says of the model a route names, or the protocol's 404, counted under
/// `route`.
fn about(
    app: &App,
    (model, version): (&str, Option<&str>),
    route: &'static str,
    answer: impl FnOnce(&ModelSpec) -> Response,
) -> Response {
    let response = match hosted(app, model, version) {
        Ok(spec) => answer(spec),
        Err(failure) => v2_failure(failure),
    };
    app.metrics.request(route, response.status());
    response
}

fn metadata_of(app: &App, model: &str, version: Option<&str>) -> Response {
    about(app, (model, version), "/v2/models", |spec| Json(spec.metadata()).into_response())
}

async fn model_config(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    config_of(&app, &model, None)
}

async fn model_config_version(State(app): State<Arc<App>>, Path((model, version)): Path<(String, String)>) -> Response {
    config_of(&app, &model, Some(&version))
}

fn config_of(app: &App, model: &str, version: Option<&str>) -> Response {
    about(app, (model, version), "/v2/models/config", |spec| Json(spec.config(app.config.max_batch)).into_response())
}

/// Every model's statistics: the one served.
async fn all_statistics(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/v2/models/stats", StatusCode::OK);
    Json(v2::StatisticsResponse { model_stats: vec![app.statistics()] }).into_response()
}

async fn model_statistics(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    statistics_of(&app, &model, None)
}

async fn model_statistics_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    statistics_of(&app, &model, Some(&version))
}

fn statistics_of(app: &App, model: &str, version: Option<&str>) -> Response {
    about(app, (model, version), "/v2/models/stats", |_| {
        Json(v2::StatisticsResponse { model_stats: vec![app.statistics()] }).into_response()
    })
}

/// The models served (`{"ready": true}`: those ready only); an empty body asks for all.
async fn repository_index(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let asked = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(v2::IndexRequest::default())
    } else {
        serde_json::from_slice::<v2::IndexRequest>(&body)
    };
    let response = match asked {
        Ok(asked) => Json(app.index(asked.ready)).into_response(),
        Err(e) => v2_failure(Failure::bad_input(format!("a repository index request: {e}"))),
    };
    app.metrics.request("/v2/repository/index", response.status());
    response
}

/// Refused: the model served is fixed when the server starts.
async fn load_or_unload(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    let message = format!(
        "cannot load or unload '{model}': this server serves '{}', fixed when it starts",
        app.config.model.name
    );
    let response = v2_failure(Failure::bad_input(message));
    app.metrics.request("/v2/repository/models", response.status());
    response
}

async fn model_ready(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    readiness_of(&app, &model, None)
}

async fn model_ready_version(State(app): State<Arc<App>>, Path((model, version)): Path<(String, String)>) -> Response {
    readiness_of(&app, &model, Some(&version))
}

fn readiness_of(app: &App, model: &str, version: Option<&str>) -> Response {
    about(app, (model, version), "/v2/models/ready", |spec| {
        let ready = !app.draining.load(Ordering::SeqCst);
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, Json(serde_json::json!({"name": spec.name, "ready": ready}))).into_response()
    })
}

async fn infer(State(app): State<Arc<App>>, Path(model): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    infer_model(&app, &model, None, &headers, &body).await
}

async fn infer_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer_model(&app, &model, Some(&version), &headers, &body).await
}

async fn infer_model(app: &App, model: &str, version: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Response {
    let started = Instant::now();
    let (response, refused) = match v2_infer(app, model, version, headers, body).await {
        Ok(response) => (response, None),
        Err(failure) => {
            let code = failure.code;
            (v2_failure(failure), Some(code))
        }
    };
    app.observe("/v2/models/infer", response.status(), refused, Some(started));
    response
}

/// A v2 inference: the input tensor's rows admitted as queries, answered as one output tensor.
async fn v2_infer(
    app: &App,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Failure> {
    let spec = hosted(app, model, version)?;
    let protocol = |e: v2::ProtocolError| Failure::bad_input(e.to_string());
    let header_length = match headers.get(v2::HEADER_LENGTH) {
        Some(value) => {
            Some(value.to_str().map_err(|_| Failure::bad_input(format!("a bad {} header", v2::HEADER_LENGTH)))?)
        }
        None => None,
    };
    let (request, binary) = v2::split_body::<v2::InferRequest>(body, header_length).map_err(protocol)?;
    let asked = request.inputs.iter().map(|t| (&t.name, &t.parameters));
    for (name, parameters) in asked.chain(request.outputs.iter().flatten().map(|o| (&o.name, &o.parameters))) {
        v2::refuse_unsupported(name, |key| v2::flag(parameters, key)).map_err(protocol)?;
    }
    let inputs: Vec<&str> = request.inputs.iter().map(|t| t.name.as_str()).collect();
    let mut binary_output = v2::flag(&request.parameters, "binary_data_output");
    let outputs: Vec<&str> = request.outputs.iter().flatten().map(|o| o.name.as_str()).collect();
    binary_output |= request.outputs.iter().flatten().any(|o| v2::flag(&o.parameters, "binary_data"));
    check_tensors(spec, &inputs, &outputs)?;
    // Checked before any work is done for it.
    let mut classes = None;
    for output in request.outputs.iter().flatten() {
        classes = classes.or(v2::classification(&output.parameters).map_err(protocol)?);
    }
    let values = v2::tensor_values(&request.inputs, binary).map_err(protocol)?.pop().unwrap_or_default();
    let Inference { data, rows, approximate_rows } = infer_tensor(app, spec, &request.inputs[0].shape, values).await?;
    let c = spec.output_len;
    let mut parameters = serde_json::Map::new();
    parameters.insert("approximate".into(), (!approximate_rows.is_empty()).into());
    if !approximate_rows.is_empty() {
        parameters.insert("approximate_rows".into(), list(&approximate_rows).into());
    }
    fn respond<T>(spec: &ModelSpec, id: Option<String>, output: T) -> v2::InferResponse<T> {
        let (model_name, model_version) = (spec.name.clone(), Some(spec.version.clone()));
        v2::InferResponse { model_name, model_version, id, parameters: None, outputs: vec![output] }
    }
    let (body, header_length) = match classes {
        None => {
            let binary = if binary_output {
                parameters.insert(v2::BINARY_DATA_SIZE.into(), (data.len() * 4).into());
                v2::DataType::Fp32.encode(&data)
            } else {
                Vec::new()
            };
            let output = v2::Tensor {
                name: spec.output_name.clone(),
                shape: vec![rows as i64, c as i64],
                datatype: "FP32".into(),
                parameters: Some(parameters),
                data: (!binary_output).then_some(data),
            };
            v2::join_body(&respond(spec, request.id, output), &binary)
        }
        // Triton's classification extension: each row's top classes as strings.
        Some(count) => {
            let classes = v2::classify(&data, c, count);
            let binary = if binary_output {
                let bytes = v2::encode_bytes(&classes);
                parameters.insert(v2::BINARY_DATA_SIZE.into(), bytes.len().into());
                bytes
            } else {
                Vec::new()
            };
            let output = v2::BytesTensor {
                name: spec.output_name.clone(),
                shape: vec![rows as i64, count.min(c) as i64],
                datatype: "BYTES",
                parameters: Some(parameters),
                data: (!binary_output).then_some(classes),
            };
            v2::join_body(&respond(spec, request.id, output), &binary)
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    match header_length {
        Some(n) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(v2::HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}

/// The answer to one v2 inference, whatever its wire format.
pub(super) struct Inference {
    /// `rows x C` values, row-major.
    pub data: Vec<f32>,
    pub rows: usize,
    /// The rows decoded approximately.
    pub approximate_rows: Vec<usize>,
}

/// `rows` as the `approximate_rows` parameter writes them: comma-separated.
pub(super) fn list(rows: &[usize]) -> String {
    rows.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// Checks a request's tensor names against the hosted model: one input, its own; outputs (if
/// any are asked for) its own.
pub(super) fn check_tensors(spec: &ModelSpec, inputs: &[&str], outputs: &[&str]) -> Result<(), Failure> {
    let [input] = inputs else {
        return Err(Failure::bad_input(format!(
            "model '{}' takes one input, '{}'; the request has {}",
            spec.name,
            spec.input_name,
            inputs.len()
        )));
    };
    if *input != spec.input_name {
        return Err(Failure::bad_input(format!(
            "unexpected input '{input}' for model '{}': it takes '{}'",
            spec.name, spec.input_name
        )));
    }
    if let Some(output) = outputs.iter().find(|&&o| o != spec.output_name) {
        return Err(Failure::bad_input(format!(
            "unexpected output '{output}' for model '{}': it answers '{}'",
            spec.name, spec.output_name
        )));
    }
    Ok(())
}

/// Admits the rows of an input tensor of `shape` holding `values` as queries and waits for
/// every answer: a v2 request is answered whole or failed whole.
pub(super) async fn infer_tensor(
    app: &App,
    spec: &ModelSpec,
    shape: &[i64],
    values: Vec<f32>,
) -> Result<Inference, Failure> {
    let d = spec.input_len();
    let batch = shape.first().copied().unwrap_or(0);
    let per_query: Option<i64> = shape.iter().skip(1).try_fold(1i64, |n, &s| n.checked_mul(s));
    if shape.len() < 2 || per_query != Some(d as i64) || batch < 1 {
        return Err(Failure::bad_input(format!(
            "input '{}' has shape {shape:?}: expected [batch, ...] with {d} values per query (one query: {:?})",
            spec.input_name, spec.input_shape
        )));
    }
    if values.len() != batch as usize * d {
        return Err(Failure::bad_input(format!(
            "input '{}' of shape {shape:?} holds {} values",
            spec.input_name,
            values.len()
        )));
    }
    let queries = checked_rows(values.chunks_exact(d).map(<[f32]>::to_vec).collect(), &app.config)?;
    let answers = run(app, queries).await?;
    let mut data = Vec::with_capacity(answers.len() * spec.output_len);
    let mut approximate_rows = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(answer) => {
                data.extend_from_slice(&answer.output);
                if answer.approximate {
                    approximate_rows.push(i);
                }
            }
            Err(failure) => return Err(Failure { message: format!("query {i}: {}", failure.message), ..failure }),
        }
    }
    Ok(Inference { rows: data.len() / spec.output_len.max(1), data, approximate_rows })
}
