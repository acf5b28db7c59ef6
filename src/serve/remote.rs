//! Workers in other processes or on other machines: any server that speaks the Open Inference
//! Protocol (Triton, KServe, MLServer, `approxifer worker`) runs the model, and a
//! [`RemoteWorker`] sends it each batch.
//!
//! A remote worker forms its coded queries on the host ([`Work::host_input`]) and sends them as
//! one request of `[rows, ...]`; the answer's rows come back in order. Its server's failures are
//! a straggler's, never the user's errors: a request past its deadline, a refused connection or
//! an error status is a missing answer, which the code absorbs. After a failure (a late answer
//! included) the worker is *down*: it refuses new batches at once (the scheme sends them
//! elsewhere) until a readiness probe succeeds, tried again with exponential backoff, so that a
//! server that is down is not hammered and one too slow for the deadline does not pile up work
//! nobody waits for. It learns the model's tensor names and input type from the server's
//! metadata on each probe, so a restarted server with another configuration is picked up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Deserialize;

use super::grpc::client::{Client as GrpcClient, GrpcError};
use super::v2::{self, DataType};
use super::worker::{Request, Response, Worker, WorkerError};

/// The wire protocol a remote worker speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// v2 gRPC (HTTP/2, one multiplexed connection), tensors as raw contents.
    #[default]
    Grpc,
    /// v2 REST (HTTP/1.1, keep-alive), tensors as binary data unless `binary = false`.
    Rest,
}

/// Where a remote worker is and which model it runs there: one entry of a `--workers` file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `http://host:port` (`grpc://host:port` in a file means `protocol = "grpc"`).
    pub url: String,
    /// The model's name on that server.
    pub model: String,
    /// A version to ask for; the server's choice when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// gRPC unless told otherwise (in a file; on the command line the URL's scheme says).
    #[serde(default)]
    pub protocol: Protocol,
    /// REST: send and ask for tensors as binary data (the extension Triton and `approxifer
    /// worker` speak; `Some(true)`) or as JSON (`Some(false)`). `None` (the default) tries
    /// binary data and moves to JSON for good if the server refuses it where it takes JSON
    /// (MLServer answers binary requests with an error status).
    #[serde(default)]
    pub binary: Option<bool>,
}

/// Why an endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("worker URL '{0}': expected grpc:// or http://HOST:PORT[/v2/models/MODEL[/versions/V]]")]
    Url(String),
    #[error("workers file {path}: {message}")]
    File { path: String, message: String },
}

impl Endpoint {
    /// `grpc://host:port[/v2/models/MODEL[/versions/V]]` (v2 gRPC) or `http://...` (v2 REST);
    /// the model is `default_model` when the URL names none.
    pub fn parse(url: &str, default_model: &str) -> Result<Self, EndpointError> {
        let bad = || EndpointError::Url(url.to_owned());
        let (protocol, rest) = match (url.strip_prefix("grpc://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (Protocol::Grpc, rest),
            (_, Some(rest)) => (Protocol::Rest, rest),
            _ => return Err(bad()),
        };
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        if !is_host_and_port(host) {
            return Err(bad());
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (model, version) = match segments.as_slice() {
            [] => (default_model.to_owned(), None),
            ["v2", "models", model] => ((*model).to_owned(), None),
            ["v2", "models", model, "versions", version] => ((*model).to_owned(), Some((*version).to_owned())),
            _ => return Err(bad()),
        };
        Ok(Endpoint { url: format!("http://{host}"), model, version, protocol, binary: None })
    }

    /// The `[[worker]]` entries of a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Vec<Self>, EndpointError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            worker: Vec<Endpoint>,
        }
        let error = |message: String| EndpointError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut file: File = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        for endpoint in &mut file.worker {
            if let Some(host) = endpoint.url.strip_prefix("grpc://") {
                endpoint.url = format!("http://{host}");
                endpoint.protocol = Protocol::Grpc;
            }
            let Some(rest) = endpoint.url.strip_prefix("http://") else {
                return Err(error(format!("url '{}' must start with grpc:// or http://", endpoint.url)));
            };
            if !is_host_and_port(rest.split('/').next().unwrap_or_default()) {
                return Err(error(format!("url '{}': the host or port is not valid", endpoint.url)));
            }
        }
        Ok(file.worker)
    }

    /// The model's base path: `/v2/models/{model}[/versions/{v}]`.
    fn model_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match &self.version {
            Some(v) => format!("{base}/v2/models/{}/versions/{v}", self.model),
            None => format!("{base}/v2/models/{}", self.model),
        }
    }
}

/// Whether `authority` is a host with, if any, a port that exists (a typo such as `:181822`
/// is refused at start, not met as a server that never answers).
fn is_host_and_port(authority: &str) -> bool {
    let Ok(parsed) = authority.parse::<tonic::codegen::http::uri::Authority>() else { return false };
    // Its port is what follows the host (`[::1]` with its brackets), if anything does.
    let port = &authority[parsed.host().len().min(authority.len())..];
    !parsed.host().is_empty()
        && !authority.contains('@')
        && (port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()))
}

/// The endpoint as a URL names it: `grpc://host:port/v2/models/m` or `http://...`.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol {
            Protocol::Grpc => write!(f, "grpc://{}", self.model_url().trim_start_matches("http://")),
            Protocol::Rest => f.write_str(&self.model_url()),
        }
    }
}

/// How a remote worker talks to its server.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    pub endpoint: Endpoint,
    /// One query's dimensions, as the coordinator holds them (used where the server's
    /// metadata leaves a dimension open).
    pub input_shape: Vec<usize>,
    /// Values per answer row.
    pub output_len: usize,
    /// A request not answered within this is a straggler's: given up on.
    pub timeout: Duration,
    /// Requests in flight to the server at once.
    pub concurrency: usize,
    /// Batches queued beyond those in flight.
    pub capacity: usize,
}

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest answer read from a server.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Transport(#[from] ureq::Error),
    #[error("status {status}: {message}")]
    Status { status: u16, message: String },
    #[error(transparent)]
    Protocol(#[from] v2::ProtocolError),
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("{0}")]
    Model(String),
}

/// The model's tensors as the server describes them.
#[derive(Clone, Debug)]
struct Tensors {
    input: String,
    datatype: DataType,
    /// One query's dimensions to send.
    input_shape: Vec<i64>,
    output: String,
}

/// Whether the server is up, and when to probe it again if not.
struct Health {
    tensors: Option<Tensors>,
    retry_at: Instant,
    backoff: Duration,
    /// The outage's first failure was reported; an outage ends with an answer, not with a
    /// probe (a server whose readiness route answers may still fail every inference).
    reported: bool,
}

/// What the worker's threads share.
struct Shared {
    index: usize,
    config: RemoteConfig,
    transport: Transport,
    health: Mutex<Health>,
    /// REST with `binary: None`: the server refused binary data and took JSON, which is sent
    /// from then on.
    json_only: AtomicBool,
    /// Set on drop: queued requests are then discarded.
    stop: AtomicBool,
    answered: AtomicU64,
    failed: AtomicU64,
    /// Nanoseconds requests spent in flight (the worker's busy time, as the coordinator sees it).
    busy_ns: AtomicU64,
    /// When the oldest call sent since the last answer started: a server whose calls are all
    /// given up (their batches decoded from others) for longer than the timeout is not
    /// answering, though no call of its timed out (a partitioned host's).
    unanswered_since: Mutex<Option<Instant>>,
}

/// How a remote worker reaches its server.
enum Transport {
    /// Keep-alive HTTP/1.1 connections, one per thread.
    Rest(ureq::Agent),
    /// One HTTP/2 channel, made lazily and remade by itself after failures; or why the
    /// endpoint's address could not make one (every probe then fails with it).
    Grpc(Result<GrpcClient, String>),
}

/// A worker whose model runs on a v2 server: a bounded queue served by `concurrency` threads,
/// each with a request in flight at most (REST: a keep-alive connection each; gRPC: one shared
/// HTTP/2 channel).
pub struct RemoteWorker {
    shared: Arc<Shared>,
    queue: Sender<(Request, Sender<Response>)>,
    threads: Vec<JoinHandle<()>>,
}

impl RemoteWorker {
    /// Worker `index` in front of `config.endpoint`. Probes the server once (up to the
    /// timeout) so that a server already down is known down before the first batch; never
    /// fails: a server that is down is retried later.
    pub fn connect(index: usize, config: RemoteConfig) -> Self {
        let endpoint = &config.endpoint;
        let transport = match endpoint.protocol {
            Protocol::Rest => Transport::Rest(
                ureq::Agent::config_builder()
                    .timeout_global(Some(config.timeout))
                    .http_status_as_error(false)
                    .max_idle_connections_per_host(config.concurrency.max(1) * 2)
                    .build()
                    .into(),
            ),
            Protocol::Grpc => Transport::Grpc(
                GrpcClient::new(&endpoint.url, &endpoint.model, endpoint.version.as_deref(), config.timeout)
                    .map_err(|e| e.to_string()),
            ),
        };
        let now = Instant::now();
        let shared = Arc::new(Shared {
            index,
            transport,
            health: Mutex::new(Health { tensors: None, retry_at: now, backoff: FIRST_BACKOFF, reported: false }),
            json_only: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            unanswered_since: Mutex::new(None),
            config,
        });
        shared.tensors();
        let (queue, jobs) = crossbeam_channel::bounded(shared.config.capacity.max(1));
        let threads = (0..shared.config.concurrency.max(1))
            .map(|t| {
                let (shared, jobs) = (shared.clone(), jobs.clone());
                std::thread::Builder::new()
                    .name(format!("approxifer-remote-{index}-{t}"))
                    .spawn(move || shared.run(&jobs))
                    .expect("spawning a remote worker thread")
            })
            .collect();
        RemoteWorker { shared, queue, threads }
    }

    /// Batches answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Batches lost to the server (down, late, or an error status).
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Time requests spent in flight to the server.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.shared.busy_ns.load(Ordering::Relaxed))
    }

    /// Whether the last contact with the server succeeded.
    pub fn is_up(&self) -> bool {
        self.shared.health.lock().is_ok_and(|h| h.tensors.is_some())
    }
}

impl Shared {
    fn run(&self, jobs: &Receiver<(Request, Sender<Response>)>) {
        for (request, reply) in jobs.iter() {
            if self.stop.load(Ordering::Relaxed) || request.cancel.is_cancelled() {
                continue;
            }
            let failed = || {
                let _ = reply.send(Response { id: request.id, worker: self.index, output: None });
            };
            let Some(tensors) = self.tensors() else {
                failed();
                continue;
            };
            let started = Instant::now();
            if let Ok(mut since) = self.unanswered_since.lock() {
                since.get_or_insert(started);
            }
            let result = self.infer(&request, &tensors);
            self.busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match result {
                Ok(output) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    self.answering();
                    let _ = reply.send(Response { id: request.id, worker: self.index, output: Some(output) });
                }
                // Given up because nobody needs the answer (its batch is decoded or was
                // cancelled): no failure of the server's, unless nothing has come back for
                // longer than a call may take.
                Err(CallError::Grpc(GrpcError::Cancelled)) => {
                    let since = self.unanswered_since.lock().ok().and_then(|since| *since);
                    if let Some(quiet) = since.map(|since| since.elapsed()).filter(|&q| q > self.config.timeout) {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        self.down(&CallError::Model(format!(
                            "no answer in {} ms; its calls were given up unanswered",
                            quiet.as_millis()
                        )));
                    }
                }
                Err(error) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    // Late or failed, the server is rested until a probe succeeds: a server
                    // that is down must not be hammered, and one too slow for the deadline
                    // would only queue work nobody waits for.
                    self.down(&error);
                    failed();
                }
            }
        }
    }

    /// The model's tensors if the server is up, probing it first when it is down and due.
    fn tensors(&self) -> Option<Tensors> {
        let now = Instant::now();
        {
            let health = self.health.lock().ok()?;
            if health.tensors.is_some() || now < health.retry_at {
                return health.tensors.clone();
            }
        }
        match self.probe() {
            Ok(tensors) => {
                // The backoff and the report stay until an answer: a server that says it is
                // ready and then fails every request is probed ever more slowly, and said once.
                let mut health = self.health.lock().ok()?;
                health.tensors = Some(tensors.clone());
                health.retry_at = now;
                Some(tensors)
            }
            Err(error) => {
                self.down(&error);
                None
            }
        }
    }

    /// Marks the server down after `error`, to be probed again after the backoff (the quiet
    /// time counts again from the next call).
    fn down(&self, error: &CallError) {
        if let Ok(mut since) = self.unanswered_since.lock() {
            *since = None;
        }
        let Ok(mut health) = self.health.lock() else { return };
        if !health.reported {
            eprintln!(
                "approxifer: worker {} ({}) is not answering, retrying with backoff: {error}",
                self.index, self.config.endpoint
            );
            health.reported = true;
        }
        let wait = health.backoff;
        health.tensors = None;
        health.retry_at = Instant::now() + wait;
        health.backoff = (wait * 2).min(MAX_BACKOFF);
    }

    /// After an answer: an outage is over (said if it was reported) and the backoff starts
    /// again from the first wait.
    fn answering(&self) {
        if let Ok(mut since) = self.unanswered_since.lock() {
            *since = None;
        }
        let Ok(mut health) = self.health.lock() else { return };
        if health.reported {
            eprintln!("approxifer: worker {} ({}) is answering again", self.index, self.config.endpoint);
            health.reported = false;
        }
        health.backoff = FIRST_BACKOFF;
    }

    fn is_down(&self) -> bool {
        self.health.lock().map_or(true, |h| h.tensors.is_none() && Instant::now() < h.retry_at)
    }

    /// The model's readiness and metadata: its tensors, checked against the coordinator's
    /// query and answer sizes.
    fn probe(&self) -> Result<Tensors, CallError> {
        let metadata = match &self.transport {
            Transport::Grpc(grpc) => grpc.as_ref().map_err(|e| CallError::Model(e.clone()))?.probe()?,
            Transport::Rest(agent) => self.probe_rest(agent)?,
        };
        self.tensors_of(&metadata)
    }

    /// The model's metadata over REST, if its ready route says it is ready.
    fn probe_rest(&self, agent: &ureq::Agent) -> Result<v2::ModelMetadata, CallError> {
        let base = self.config.endpoint.model_url();
        let mut ready = agent.get(format!("{base}/ready")).call()?;
        if ready.status() != 200 {
            let message = ready.body_mut().read_to_string().unwrap_or_default();
            return Err(CallError::Status { status: ready.status().as_u16(), message });
        }
        let mut response = agent.get(&base).call()?;
        let body = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec()?;
        if response.status() != 200 {
            return Err(status_error(response.status().as_u16(), &body));
        }
        Ok(v2::split_body(&body, None)?.0)
    }

    fn tensors_of(&self, metadata: &v2::ModelMetadata) -> Result<Tensors, CallError> {
        let model = &self.config.endpoint.model;
        let (Some(input), Some(output)) = (metadata.inputs.first(), metadata.outputs.first()) else {
            return Err(CallError::Model(format!("model '{model}' lists no input or no output")));
        };
        if metadata.inputs.len() != 1 {
            return Err(CallError::Model(format!(
                "model '{model}' takes {} inputs; one is served",
                metadata.inputs.len()
            )));
        }
        let datatype = DataType::parse(&input.datatype)?;
        let Some((&batch, dims)) = input.shape.split_first() else {
            return Err(CallError::Model(format!("model '{model}' input '{}' has no dimensions", input.name)));
        };
        if batch != -1 {
            return Err(CallError::Model(format!(
                "model '{model}' input '{}' has shape {:?}: its first dimension must be the batch (-1)",
                input.name, input.shape
            )));
        }
        let input_len: usize = self.config.input_shape.iter().product();
        let input_shape = if dims.iter().all(|&d| d >= 0) {
            if dims.iter().product::<i64>() != input_len as i64 {
                return Err(CallError::Model(format!(
                    "model '{model}' takes queries of shape {dims:?}; the coordinator's have {input_len} values"
                )));
            }
            dims.to_vec()
        } else {
            self.config.input_shape.iter().map(|&d| d as i64).collect()
        };
        Ok(Tensors { input: input.name.clone(), datatype, input_shape, output: output.name.clone() })
    }

    /// Sends the request's rows and reads back `rows x C` values.
    fn infer(&self, request: &Request, tensors: &Tensors) -> Result<Vec<f32>, CallError> {
        let values = request.work.host_input().map_err(|e| CallError::Model(e.to_string()))?;
        let rows = request.work.rows();
        let shape: Vec<i64> = std::iter::once(rows as i64).chain(tensors.input_shape.iter().copied()).collect();
        let output = match &self.transport {
            Transport::Grpc(grpc) => {
                let grpc = grpc.as_ref().map_err(|e| CallError::Model(e.clone()))?;
                let input = (tensors.input.as_str(), tensors.datatype, shape);
                grpc.infer(request.id.to_string(), input, &values, &tensors.output, &request.cancel)?
            }
            Transport::Rest(agent) => self.infer_rest_negotiated(agent, request.id, tensors, shape, values)?,
        };
        let expected = rows * self.config.output_len;
        if output.len() != expected {
            return Err(CallError::Model(format!(
                "output '{}' has {} values for {rows} rows; {expected} expected",
                tensors.output,
                output.len()
            )));
        }
        Ok(output)
    }

    /// [`infer_rest`](Self::infer_rest) in the encoding the endpoint asks for, or, left to
    /// the worker, in binary data until the server answers an error status to it and the same
    /// request as JSON: then in JSON for good, said once. A transient status (overloaded,
    /// unavailable, timed out: [`is_transient`]) is an error like any other, not a refusal.
    fn infer_rest_negotiated(
        &self,
        agent: &ureq::Agent,
        id: u64,
        tensors: &Tensors,
        shape: Vec<i64>,
        values: Vec<f32>,
    ) -> Result<Vec<f32>, CallError> {
        let query = (&shape[..], &values[..]);
        if let Some(binary) = self.config.endpoint.binary {
            return self.infer_rest(agent, id, tensors, query, binary);
        }
        if self.json_only.load(Ordering::Relaxed) {
            return self.infer_rest(agent, id, tensors, query, false);
        }
        match self.infer_rest(agent, id, tensors, query, true) {
            Err(refused @ CallError::Status { status, .. }) if !is_transient(status) => {
                let json = || self.infer_rest(agent, id, tensors, query, false);
                // A server that failed on the binary request may close that connection after
                // its answer (uvicorn does, MLServer's front), and the pool hands it to the
                // retry: once more, on a new one.
                let answer = json()
                    .or_else(|error| if let CallError::Transport(_) = error { json() } else { Err(error) })
                    .map_err(|_| refused)?;
                if !self.json_only.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "approxifer: worker {} ({}) refuses binary tensor data and takes JSON: sending JSON",
                        self.index, self.config.endpoint
                    );
                }
                Ok(answer)
            }
            other => other,
        }
    }

    /// One v2 REST inference: `values` as a tensor of `shape`, in binary data or JSON, the
    /// output's values back.
    fn infer_rest(
        &self,
        agent: &ureq::Agent,
        id: u64,
        tensors: &Tensors,
        (shape, values): (&[i64], &[f32]),
        binary: bool,
    ) -> Result<Vec<f32>, CallError> {
        let output_parameters = binary.then(|| serde_json::Map::from_iter([("binary_data".into(), true.into())]));
        let mut input = v2::Tensor {
            name: tensors.input.clone(),
            shape: shape.to_vec(),
            datatype: tensors.datatype.name().into(),
            parameters: None,
            data: None,
        };
        let payload = if binary {
            let bytes = tensors.datatype.encode(values);
            input.parameters = Some(serde_json::Map::from_iter([(v2::BINARY_DATA_SIZE.into(), bytes.len().into())]));
            bytes
        } else {
            input.data = Some(values.to_vec());
            Vec::new()
        };
        let body = v2::InferRequest {
            id: Some(id.to_string()),
            parameters: None,
            inputs: vec![input],
            outputs: Some(vec![v2::RequestedOutput { name: tensors.output.clone(), parameters: output_parameters }]),
        };
        let (body, header_length) = v2::join_body(&body, &payload);
        let mut call = agent.post(format!("{}/infer", self.config.endpoint.model_url()));
        call = match header_length {
            Some(n) => call.header("content-type", "application/octet-stream").header(v2::HEADER_LENGTH, n.to_string()),
            None => call.header("content-type", "application/json"),
        };
        let mut response = call.send(&body[..])?;
        let status = response.status().as_u16();
        let header_length = response.headers().get(v2::HEADER_LENGTH).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec()?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        let (answer, binary): (v2::InferResponse, _) = v2::split_body(&body, header_length.as_deref())?;
        let values = v2::tensor_values(&answer.outputs, binary)?;
        let position = answer.outputs.iter().position(|t| t.name == tensors.output);
        position
            .and_then(|p| values.into_iter().nth(p))
            .ok_or_else(|| CallError::Model(format!("the answer has no output '{}'", tensors.output)))
    }
}

/// Whether `status` says the server (or a proxy in front of it) could not take the request
/// now, whatever its encoding: timed out, overloaded, unavailable. Such a refusal of binary
/// data says nothing of whether the server reads it.
fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 502 | 503 | 504)
}

/// An error status with the server's `{"error": ...}` message, or else one line of its body:
/// the last that is not blank, where a Python server's traceback puts the exception (MLServer
/// answers a request it cannot parse with a whole traceback as text), cut to 200 characters.
fn status_error(status: u16, body: &[u8]) -> CallError {
    let message = serde_json::from_slice::<v2::ErrorBody>(body).map(|e| e.error).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        let line = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
        line.chars().take(200).collect()
    });
    CallError::Status { status, message }
}

impl Worker for RemoteWorker {
    fn index(&self) -> usize {
        self.shared.index
    }

    fn device(&self) -> Option<&burn::tensor::Device> {
        None
    }

    fn location(&self) -> String {
        self.shared.config.endpoint.to_string()
    }

    fn submit(&self, request: Request, replies: &Sender<Response>) -> Result<(), WorkerError> {
        if self.shared.is_down() {
            return Err(WorkerError::Unavailable(self.shared.index));
        }
        self.queue.try_send((request, replies.clone())).map_err(|e| match e {
            TrySendError::Full(_) => WorkerError::Busy(self.shared.index),
            TrySendError::Disconnected(_) => WorkerError::Stopped(self.shared.index),
        })
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.queue, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_urls_name_the_server_and_optionally_the_model() {
        let plain = Endpoint::parse("http://10.0.0.2:8000", "lenet").unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.model.as_str(), plain.version.as_deref()),
            ("http://10.0.0.2:8000", "lenet", None)
        );
        let named = Endpoint::parse("http://h:1/v2/models/m/versions/3", "lenet").unwrap();
        assert_eq!((named.model.as_str(), named.version.as_deref()), ("m", Some("3")));
        assert_eq!(named.model_url(), "http://h:1/v2/models/m/versions/3");
        for good in ["http://[::1]:8000", "grpc://h", "http://host.example:65535/v2/models/m"] {
            assert!(Endpoint::parse(good, "m").is_ok(), "{good}");
        }
        let grpc = Endpoint::parse("grpc://h:2/v2/models/m", "lenet").unwrap();
        assert_eq!((grpc.protocol, plain.protocol, grpc.url.as_str()), (Protocol::Grpc, Protocol::Rest, "http://h:2"));
        // Messages name an endpoint as its URL would.
        assert_eq!(grpc.to_string(), "grpc://h:2/v2/models/m");
        assert_eq!(plain.to_string(), "http://10.0.0.2:8000/v2/models/lenet");
        for bad in [
            "h:1",
            "http://",
            "http://h:1/v1/predict",
            "grpcx://h:1",
            "http://h:1/v2/models",
            "grpc://h:181822",
            "http://h:x",
            "http://a b:1",
        ] {
            assert!(Endpoint::parse(bad, "m").is_err(), "{bad}");
        }
    }

    #[test]
    fn an_error_status_says_the_servers_message_in_one_line() {
        let message = |body: &[u8]| match status_error(500, body) {
            CallError::Status { status: 500, message } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(message(br#"{"error": "unknown model"}"#), "unknown model");
        let traceback = b"Traceback (most recent call last):\n  File \"app.py\", line 3\nValueError: bad input\n\n";
        assert_eq!(message(traceback), "ValueError: bad input");
        assert_eq!(message(&[b'x'; 500]).len(), 200);
        assert_eq!(message(b""), "");
    }

    #[test]
    fn a_workers_file_lists_endpoints_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.toml");
        std::fs::write(
            &path,
            "[[worker]]\nurl = \"http://a:1\"\nmodel = \"x\"\n\n[[worker]]\nurl = \"http://b:2\"\nmodel = \"y\"\nversion = \"2\"\nprotocol = \"rest\"\nbinary = false\n\n[[worker]]\nurl = \"grpc://c:3\"\nmodel = \"z\"\n",
        )
        .unwrap();
        let endpoints = Endpoint::from_file(&path).unwrap();
        assert_eq!(endpoints.len(), 3);
        assert_eq!(
            (endpoints[0].binary, endpoints[1].binary, endpoints[1].version.as_deref()),
            (None, Some(false), Some("2"))
        );
        let protocols: Vec<Protocol> = endpoints.iter().map(|e| e.protocol).collect();
        assert_eq!(protocols, [Protocol::Grpc, Protocol::Rest, Protocol::Grpc], "gRPC unless told otherwise");
        assert_eq!(endpoints[2].url, "http://c:3");
        std::fs::write(&path, "[[worker]]\nurl = \"http://a:1\"\nmodel = \"x\"\nport = 3\n").unwrap();
        assert!(matches!(Endpoint::from_file(&path), Err(EndpointError::File { .. })));
        std::fs::write(&path, "[[worker]]\nurl = \"a:1\"\nmodel = \"x\"\n").unwrap();
        assert!(matches!(Endpoint::from_file(&path), Err(EndpointError::File { .. })));
        std::fs::write(&path, "[[worker]]\nurl = \"grpc://a:70000\"\nmodel = \"x\"\n").unwrap();
        assert!(matches!(Endpoint::from_file(&path), Err(EndpointError::File { .. })));
    }
}
