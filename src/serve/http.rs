//! `approxifer serve`'s HTTP front end: JSON tensors in, predictions out, through any
//! [`Scheme`] (the coded coordinator or a baseline); `/health`; Prometheus `/metrics`; and a
//! graceful shutdown that answers or rejects every accepted request.
//!
//! `POST /v1/predict` takes `{"inputs": [[...], ...]}` (one row of `input_len` numbers per
//! query) or `{"inputs": {"shape": [B, ...], "data": [...]}}` (a row-major tensor whose trailing
//! dimensions hold `input_len` numbers) and answers
//! `{"predictions": [{"output": [...], "approximate": false}, ...]}`, in order. A batch is
//! admitted whole or refused whole. A query that fails (its group missed the deadline) gets
//! `{"error": ..., "code": ...}` in its place and the response the status of that failure.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
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

use super::answer::{Answer, ServeError, Stats};
use super::scheme::Scheme;

/// What the server reports about itself and how it bounds requests.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The scheme's name (`approxifer`, `uncoded`, ...), reported by `/health`.
    pub scheme: String,
    /// Values per query and per prediction.
    pub input_len: usize,
    pub output_len: usize,
    /// The most queries in one request; at most the scheme's capacity.
    pub max_batch: usize,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
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
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn bad_input(message: String) -> Self {
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

/// The server's Prometheus metrics.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    queries: Family<OutcomeLabels, Counter>,
    refusals: Family<OutcomeLabels, Counter>,
    latency: Histogram,
    in_flight: Gauge,
}

impl Metrics {
    fn new() -> Self {
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
        Metrics { registry, requests, queries, refusals, latency, in_flight }
    }

    fn request(&self, route: &'static str, status: StatusCode) {
        self.requests.get_or_create(&RequestLabels { route, status: status.as_u16() }).inc();
    }

    fn query(&self, outcome: &'static str) {
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The state every handler shares.
struct App {
    /// Taken out, to be shut down, once the server has stopped.
    scheme: RwLock<Option<Box<dyn Scheme>>>,
    config: HttpConfig,
    metrics: Metrics,
    /// Set when shutdown begins: new requests are refused, `/health` reports `draining`.
    draining: AtomicBool,
}

impl App {
    fn in_flight(&self) -> usize {
        self.scheme.read().ok().and_then(|s| s.as_ref().map(|s| s.in_flight())).unwrap_or(0)
    }
}

/// The routes of [`serve`], with the body limit every route shares.
fn router(app: Arc<App>) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
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
    if config.max_batch == 0 || config.input_len == 0 {
        return Err(std::io::Error::other("max_batch and input_len must be at least 1"));
    }
    let app =
        Arc::new(App { scheme: RwLock::new(Some(scheme)), config, metrics: Metrics::new(), draining: false.into() });
    let draining = app.clone();
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.draining.store(true, Ordering::SeqCst);
        })
        .await?;
    // Every connection has closed, so every handler has returned with its answers.
    let scheme = app.scheme.write().ok().and_then(|mut s| s.take());
    Ok(scheme.map(|s| s.shutdown()).unwrap_or_default())
}

async fn predict(State(app): State<Arc<App>>, body: Result<Json<PredictRequest>, JsonRejection>) -> Response {
    let started = Instant::now();
    let response = match answer(&app, body).await {
        Ok(response) => response,
        Err(failure) => {
            app.metrics.refusals.get_or_create(&OutcomeLabels { outcome: failure.code }).inc();
            failure.into_response()
        }
    };
    app.metrics.request("/v1/predict", response.status());
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
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
    if app.draining.load(Ordering::SeqCst) {
        return Err(ServeError::ShuttingDown.into());
    }
    let tickets = {
        let scheme = app.scheme.read().map_err(|_| Failure::from(ServeError::ShuttingDown))?;
        let scheme = scheme.as_ref().ok_or(ServeError::ShuttingDown)?;
        scheme.submit_all(queries)?
    };
    // A ticket is a blocking channel: wait on the blocking pool, not on the async workers.
    // If the client goes away, the answers are still received there and dropped.
    let results = tokio::task::spawn_blocking(move || tickets.iter().map(|t| t.recv().ok()).collect::<Vec<_>>())
        .await
        .map_err(|e| Failure { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: e.to_string() })?;
    let mut status = StatusCode::OK;
    let predictions = results
        .into_iter()
        .map(|result| match result {
            Some(Ok(Answer { output, approximate })) => {
                app.metrics.query(if approximate { "approximate" } else { "exact" });
                Prediction::Answer { output, approximate }
            }
            failed => {
                let failure = match failed {
                    Some(Err(error)) => Failure::from(error),
                    _ => Failure {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        code: "internal",
                        message: "the scheme dropped this query".into(),
                    },
                };
                app.metrics.query(failure.code);
                if status == StatusCode::OK {
                    status = failure.status;
                }
                Prediction::Error { error: failure.message, code: failure.code }
            }
        })
        .collect();
    Ok((status, Json(PredictResponse { predictions })).into_response())
}

/// The request's queries as rows of `input_len` finite numbers, at most `max_batch` of them.
fn rows(inputs: Inputs, config: &HttpConfig) -> Result<Vec<Vec<f32>>, Failure> {
    let d = config.input_len;
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
        input_len: app.config.input_len,
        output_len: app.config.output_len,
        in_flight: app.in_flight(),
    };
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let response = (status, Json(body)).into_response();
    app.metrics.request("/health", response.status());
    response
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.in_flight.set(i64::try_from(app.in_flight()).unwrap_or(i64::MAX));
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
