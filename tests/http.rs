//! `approxifer serve`'s HTTP front end on a real socket: predictions, typed errors for every
//! bad request, overload, `/health`, Prometheus `/metrics`, and a graceful shutdown that
//! answers what it accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approxifer::kernels::{Code, CodeParams, Layout};
use approxifer::serve::v2;
use approxifer::serve::{
    Baseline, BaselineConfig, Coordinator, CoordinatorConfig, FaultPlan, Latency, Learning, LocalWorker, Policy,
    Scheme, Stats, Worker, WorkerFaults,
};
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{C, D, coordinator_config, expected, model, query};

#[path = "support/server.rs"]
mod server;
mod support;

const MAX_BATCH: usize = 8;

/// A coordinator over `K = 3`, `N = 5` (systematic) local workers meeting `faults`.
fn coordinator(faults: Option<FaultPlan>, capacity: usize, deadline_ms: u64) -> Box<dyn Scheme> {
    let code = Code::new(CodeParams::builder(3, 5).stragglers(2).layout(Layout::Systematic).build().unwrap()).unwrap();
    let workers: Vec<Arc<dyn Worker>> =
        (0..5).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 1000)) as Arc<dyn Worker>).collect();
    let config = coordinator_config(code, faults, capacity, Duration::from_millis(deadline_ms));
    Box::new(Coordinator::start(config, workers).unwrap())
}

/// A server on an ephemeral port with a client for it.
struct Server {
    inner: server::Server,
    addr: SocketAddr,
    agent: ureq::Agent,
}

impl Server {
    fn start(scheme: Box<dyn Scheme>) -> Server {
        let inner = server::Server::start_on(server::any_ports(), scheme, MAX_BATCH, 4096);
        Server { addr: inner.addr, inner, agent: agent() }
    }

    fn url(&self, path: &str) -> String {
        self.inner.url(path)
    }

    fn post(&self, body: &str) -> (u16, Option<String>, String) {
        post(&self.agent, self.addr, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.agent.get(self.url(path)).call().expect("the server answers");
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    fn stop(self) -> Stats {
        self.inner.stop()
    }
}

/// A client that returns error statuses as responses.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// POSTs `body` as JSON to `/v1/predict`: the status, the `Retry-After` header and the body.
fn post(agent: &ureq::Agent, addr: SocketAddr, body: &str) -> (u16, Option<String>, String) {
    let mut response = agent
        .post(format!("http://{addr}/v1/predict"))
        .header("content-type", "application/json")
        .send(body)
        .expect("the server answers");
    let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (response.status().as_u16(), retry, response.body_mut().read_to_string().unwrap())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn rows(range: std::ops::Range<usize>) -> Value {
    json!({ "inputs": range.map(query).collect::<Vec<_>>() })
}

/// The value of one sample line of the Prometheus text, 0 when absent.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// `/metrics` once `name` reaches `least` (what the server publishes after it answers), or
/// as it is after 20 s.
fn metrics_once(server: &Server, name: &str, least: f64) -> String {
    let started = Instant::now();
    loop {
        let (_, metrics) = server.get("/metrics");
        if sample(&metrics, name) >= least || started.elapsed() > Duration::from_secs(20) {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_export_the_byzantine_locators_state() {
    // K = 2, A = 1, N = 5, honest workers: the calibrated locator learns from every group and
    // takes over once every position has enough answers; /metrics shows which locator is
    // active and what it has learnt, also for the code of partial groups.
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let workers: Vec<Arc<dyn Worker>> =
        (0..5).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 1000)) as Arc<dyn Worker>).collect();
    let learning = Learning { refit_every: 40, ..Learning::default() };
    let config = CoordinatorConfig {
        learning: Some(learning),
        ..coordinator_config(code, None, 1000, Duration::from_millis(2000))
    };
    let server = Server::start(Box::new(Coordinator::start(config, workers).unwrap()));
    let (_, metrics) = server.get("/metrics");
    assert_eq!(sample(&metrics, "approxifer_locator{locator=\"robust\"}"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_locator_refits"), 0.0, "{metrics}");
    for batch in 0..50 {
        let (status, _, body) = server.post(&rows(2 * batch..2 * batch + 2).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let metrics = metrics_once(&server, "approxifer_locator_refits", 1.0);
    assert_eq!(sample(&metrics, "approxifer_locator{locator=\"calibrated\"}"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_locator{locator=\"robust\"}"), 0.0, "{metrics}");
    assert!(sample(&metrics, "approxifer_locator_calibration_groups") >= 8.0, "{metrics}");
    assert!(sample(&metrics, "approxifer_locator_observed_groups") >= 8.0, "{metrics}");
    for worker in 0..5 {
        let threshold = sample(&metrics, &format!("approxifer_locator_threshold{{worker=\"{worker}\"}}"));
        assert!(threshold.is_finite() && threshold > 0.0, "{metrics}");
    }
    // Requests of one query are partial groups (K' = 1, N' = 3): their code learns a
    // calibration of its own.
    let partial = "approxifer_locator_partial_refits{queries=\"1\"}";
    assert_eq!(sample(&metrics, partial), 0.0, "{metrics}");
    assert!(!metrics.contains("approxifer_locator_partial_calibrated{"), "{metrics}");
    for q in 0..60 {
        let (status, _, body) = server.post(&rows(q..q + 1).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let metrics = metrics_once(&server, partial, 1.0);
    assert!(sample(&metrics, partial) >= 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_locator_partial_calibrated{queries=\"1\"}"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_locator{locator=\"calibrated\"}"), 1.0, "{metrics}");
    server.stop();
}

#[test]
fn a_worker_that_always_lies_is_suspected_and_named_and_only_it() {
    // K = 2, A = 1, S = 1, N = 6: worker 1 flips the sign of every answer. Placed on a
    // different node every batch, it is scored against the others wherever it served;
    // /metrics names it, and no other worker, once it stands out.
    let code = Code::new(CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let workers: Vec<Arc<dyn Worker>> =
        (0..6).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 1000)) as Arc<dyn Worker>).collect();
    let mut faults = vec![WorkerFaults::NONE; 6];
    faults[1] = WorkerFaults { byzantine_probability: 1.0, ..WorkerFaults::NONE };
    let plan = FaultPlan { latency: Latency::Constant { ms: 1.0 }, workers: faults, random_slowdown: None };
    let learning = Learning { refit_every: 40, ..Learning::default() };
    let config = CoordinatorConfig {
        learning: Some(learning),
        ..coordinator_config(code, Some(plan), 1000, Duration::from_millis(5000))
    };
    let server = Server::start(Box::new(Coordinator::start(config, workers).unwrap()));
    let suspected = |worker: usize| format!("approxifer_locator_suspected_worker{{worker=\"{worker}\"}}");
    for batch in 0..150 {
        let (status, _, body) = server.post(&rows(2 * batch..2 * batch + 2).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let metrics = metrics_once(&server, &suspected(1), 1.0);
    assert_eq!(sample(&metrics, &suspected(1)), 1.0, "{metrics}");
    for worker in [0, 2, 3, 4, 5] {
        assert!(!metrics.contains(&suspected(worker)), "{worker}: {metrics}");
    }
    assert_eq!(sample(&metrics, "approxifer_locator{locator=\"calibrated\"}"), 1.0, "{metrics}");
    server.stop();
}

#[test]
fn metrics_count_what_the_coordinator_did_to_answer() {
    // K = 3, N = 4, S = 1 and workers 0 and 1 never answer: every group waits for its hedge
    // (10 ms) to workers 2 and 3. /metrics shows the batches, the groups answered and the
    // hedges as they happen, and the same counts as the books the server returns on stop.
    let code = Code::new(CodeParams::builder(3, 4).stragglers(1).build().unwrap()).unwrap();
    let workers: Vec<Arc<dyn Worker>> =
        (0..4).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 1000)) as Arc<dyn Worker>).collect();
    let hung = WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE };
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 1.0 },
        workers: vec![hung, hung, WorkerFaults::NONE, WorkerFaults::NONE],
        random_slowdown: None,
    };
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(10)),
        ..coordinator_config(code, Some(plan), 1000, Duration::from_millis(5000))
    };
    let server = Server::start(Box::new(Coordinator::start(config, workers).unwrap()));
    for batch in 0..4 {
        let (status, _, body) = server.post(&rows(3 * batch..3 * batch + 3).to_string());
        assert_eq!(status, 200, "{body}");
    }
    // The coordinator publishes its counts after it answers: wait for the last group's.
    let metrics = metrics_once(&server, "approxifer_decoded_groups_total", 4.0);
    let stats = server.stop();
    assert_eq!((stats.decoded_groups, stats.failed_groups), (4, 0), "{stats:?}");
    assert!(stats.hedged_requests >= 4, "a hedge per group at least: {stats:?}");
    let exported = [
        ("approxifer_batches_total", stats.batches),
        ("approxifer_groups_total", stats.groups),
        ("approxifer_decoded_groups_total", stats.decoded_groups),
        ("approxifer_failed_groups_total", stats.failed_groups),
        ("approxifer_hedged_requests_total", stats.hedged_requests),
        ("approxifer_covered_parts_total", stats.covered_parts),
        ("approxifer_grace_expired_total", stats.grace_expired),
        ("approxifer_located_workers_total", stats.located_workers),
    ];
    for (name, value) in exported {
        assert_eq!(sample(&metrics, name), value as f64, "{name}: {metrics}");
    }
    assert!(sample(&metrics, "approxifer_decode_seconds_total") > 0.0, "{metrics}");
}

#[test]
fn metrics_show_which_worker_straggles_and_which_lies() {
    // K = 2, A = 1, N = 5, S = 0: every group waits for all five answers. Worker 1 shifts its
    // answers by 100 (the locator removes it from every group) and worker 3 is ten times
    // slower than the others (2 ms injected per request): per worker, /metrics shows the
    // requests, the answers, the groups located and the time busy, as the stop's books do.
    // Every group goes to the locator's learner, less the liar's answer.
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let workers: Vec<Arc<dyn Worker>> = (0..5)
        .map(|i| Arc::new(LocalWorker::with_tamper(i, model(), Device::flex(), 1000, shift.clone())) as Arc<dyn Worker>)
        .collect();
    let mut faults = vec![WorkerFaults::NONE; 5];
    faults[1].byzantine_probability = 1.0;
    faults[3].slowdown = 10.0;
    let plan = FaultPlan { latency: Latency::Constant { ms: 2.0 }, workers: faults, random_slowdown: None };
    let locations: Vec<String> = workers.iter().map(|w| w.location()).collect();
    let config = CoordinatorConfig {
        learning: Some(Learning::default()),
        ..coordinator_config(code, Some(plan), 1000, Duration::from_millis(5000))
    };
    let server = Server::start(Box::new(Coordinator::start(config, workers).unwrap()));
    let groups = 12;
    for group in 0..groups {
        let (status, _, body) = server.post(&rows(2 * group..2 * group + 2).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let metrics = metrics_once(&server, "approxifer_decoded_groups_total", groups as f64);
    let stats = server.stop();
    assert_eq!((stats.decoded_groups, stats.failed_groups), (groups as u64, 0), "{stats:?}");
    assert_eq!(sample(&metrics, "approxifer_locator_observed_groups"), groups as f64, "{metrics}");
    assert_eq!(stats.workers.len(), 5);
    // Which worker is where: one info series per worker.
    for (w, location) in locations.iter().enumerate() {
        assert!(location.starts_with("local "), "{location}");
        let info = format!("approxifer_worker_info{{worker=\"{w}\",location=\"{location}\"}}");
        assert_eq!(sample(&metrics, &info), 1.0, "{info} in {metrics}");
    }
    let exported =
        |name: &str, w: usize| sample(&metrics, &format!("approxifer_worker_{name}_total{{worker=\"{w}\"}}"));
    let mut busy_per_answer = Vec::new();
    for (w, books) in stats.workers.iter().enumerate() {
        // One request per group (no hedges: S = 0), answered, none late.
        assert_eq!((books.requests, books.answers, books.late_answers), (groups as u64, groups as u64, 0), "{w}");
        assert_eq!(books.located, if w == 1 { groups as u64 } else { 0 }, "worker {w}: {stats:?}");
        for (name, value) in [("requests", books.requests), ("answers", books.answers), ("located", books.located)] {
            assert_eq!(exported(name, w), value as f64, "worker {w}'s {name}: {metrics}");
        }
        let busy = exported("busy_seconds", w);
        assert!((busy - books.busy_ns as f64 * 1e-9).abs() < 1e-6, "worker {w}: {busy} s exported");
        busy_per_answer.push(busy / groups as f64);
    }
    // The straggler's service time stands out: about 20 ms against about 2 ms.
    let others = busy_per_answer.iter().enumerate().filter(|(w, _)| *w != 3).map(|(_, b)| *b).fold(0.0, f64::max);
    assert!(busy_per_answer[3] >= 0.018, "{busy_per_answer:?}");
    assert!(busy_per_answer[3] > 4.0 * others, "{busy_per_answer:?}");
}

#[test]
fn predictions_come_back_in_order_and_health_and_metrics_report_them() {
    let server = Server::start(coordinator(None, 100, 2000));
    let (status, _, body) = server.post(&rows(0..5).to_string());
    assert_eq!(status, 200, "{body}");
    let predictions = json(&body)["predictions"].as_array().unwrap().clone();
    assert_eq!(predictions.len(), 5);
    for (i, prediction) in predictions.iter().enumerate() {
        let output: Vec<f32> = serde_json::from_value(prediction["output"].clone()).unwrap();
        let exact = expected(&query(i));
        let error = output.iter().zip(&exact).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
        let bound = if prediction["approximate"].as_bool().unwrap() { 1.0 } else { 1e-5 };
        assert!(error < bound, "query {i}: {output:?} vs {exact:?}");
    }

    // The same queries as a tensor with a shape: the same answers' length and order.
    let data: Vec<f32> = (5..7).flat_map(query).collect();
    let (status, _, body) = server.post(&json!({ "inputs": { "shape": [2, 1, D], "data": data } }).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["predictions"].as_array().unwrap().len(), 2);

    let (status, body) = server.get("/health");
    assert_eq!(status, 200);
    let health = json(&body);
    assert_eq!((health["status"].as_str(), health["input_len"].as_u64()), (Some("serving"), Some(D as u64)));
    assert_eq!(health["in_flight"], 0);

    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    let answered = sample(&metrics, "approxifer_queries_total{outcome=\"exact\"}")
        + sample(&metrics, "approxifer_queries_total{outcome=\"approximate\"}");
    assert_eq!(answered, 7.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_http_requests_total{route=\"/v1/predict\",status=\"200\"}"), 2.0);
    assert_eq!(sample(&metrics, "approxifer_predict_latency_seconds_count"), 2.0, "{metrics}");
    assert!(metrics.contains("approxifer_queries_in_flight 0"), "{metrics}");

    let stats = server.stop();
    assert_eq!((stats.answered, stats.errors), (7, 0));
}

#[test]
fn bad_requests_get_typed_errors_and_never_a_server_error() {
    let server = Server::start(coordinator(None, 100, 2000));
    let huge = format!("{{\"inputs\": [{}]}}", vec!["0.0"; 2000].join(","));
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "bad_request"),
        (json!({ "inputs": [[1.0, 2.0, 3.0]] }).to_string(), 400, "bad_input"),
        (json!({ "inputs": [] }).to_string(), 400, "bad_input"),
        (r#"{"inputs": [[1e39, 0, 0, 0, 0, 0]]}"#.into(), 400, "bad_input"),
        (json!({ "inputs": { "shape": [2, D], "data": [1.0, 2.0] } }).to_string(), 400, "bad_input"),
        (json!({ "inputs": { "shape": [D], "data": query(0) } }).to_string(), 400, "bad_input"),
        (json!({ "input": [query(0)] }).to_string(), 422, "bad_request"),
        (json!({ "inputs": [query(0)], "extra": 1 }).to_string(), 422, "bad_request"),
        (rows(0..MAX_BATCH + 1).to_string(), 413, "batch_too_large"),
        (huge, 413, "bad_request"),
    ];
    for (body, status, code) in &cases {
        let (got, _, text) = server.post(body);
        assert_eq!((got, json(&text)["code"].as_str()), (*status, Some(*code)), "{body:.80}: {text}");
    }
    let (status, body) = server.get("/no/such/route");
    assert_eq!((status, json(&body)["code"].as_str()), (404, Some("not_found")));

    // Arbitrary bodies, and valid ones cut or corrupted anywhere: a 4xx with a code, never a 5xx.
    let mut rng = StdRng::seed_from_u64(9);
    let valid = rows(0..2).to_string();
    for round in 0..300 {
        let body: String = match round % 3 {
            0 => (0..rng.random_range(0..64)).map(|_| rng.random_range(0u8..128) as char).collect(),
            1 => valid[..rng.random_range(0..valid.len())].to_owned(),
            _ => {
                let mut bytes = valid.clone().into_bytes();
                let at = rng.random_range(0..bytes.len());
                bytes[at] = b"{}[],:\"0-e.x "[rng.random_range(0..13)];
                String::from_utf8(bytes).unwrap()
            }
        };
        let (status, _, text) = server.post(&body);
        if status == 200 {
            continue; // a corruption can leave valid JSON (a digit for a digit)
        }
        assert!((400..500).contains(&status), "{body:?}: {status} {text}");
        assert!(json(&text)["code"].is_string(), "{body:?}: {text}");
    }
    let (status, _, body) = server.post(&valid);
    assert_eq!(status, 200, "still serving: {body}");
    let stats = server.stop();
    assert_eq!(stats.errors, 0);
}

#[test]
fn beyond_capacity_a_request_is_refused_whole_with_retry_after_and_hung_groups_time_out() {
    let all_hang = FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE }; 5],
        random_slowdown: None,
    };
    let server = Arc::new(Server::start(coordinator(Some(all_hang), 4, 400)));
    let first = {
        let server = server.clone();
        std::thread::spawn(move || server.post(&rows(0..3).to_string()))
    };
    let started = Instant::now();
    while json(&server.get("/health").1)["in_flight"] != 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "the first request is admitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // One slot left: a request of two is refused whole, a request of one fits.
    let (status, retry, body) = server.post(&rows(3..5).to_string());
    assert_eq!((status, retry.as_deref(), json(&body)["code"].as_str()), (503, Some("1"), Some("overloaded")));
    let (status, _, body) = server.post(&rows(5..6).to_string());
    assert_eq!(status, 504, "{body}");
    let (status, _, body) = first.join().unwrap();
    assert_eq!(status, 504, "{body}");
    let predictions = json(&body)["predictions"].as_array().unwrap().clone();
    assert!(predictions.iter().all(|p| p["code"] == "deadline_missed"), "{body}");

    let metrics = server.get("/metrics").1;
    assert_eq!(sample(&metrics, "approxifer_refused_requests_total{outcome=\"overloaded\"}"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "approxifer_queries_total{outcome=\"deadline_missed\"}"), 4.0, "{metrics}");
    let stats = Arc::into_inner(server).unwrap().stop();
    assert_eq!((stats.answered, stats.errors), (0, 4));
}

#[test]
fn shutdown_answers_every_request_in_progress_then_refuses_connections() {
    let slow = FaultPlan::healthy(Latency::Constant { ms: 300.0 });
    let server = Server::start(coordinator(Some(slow), 1000, 5000));
    let addr = server.addr;
    let clients: Vec<_> =
        (0..4).map(|c| std::thread::spawn(move || post(&agent(), addr, &rows(c * 3..c * 3 + 3).to_string()))).collect();
    let started = Instant::now();
    while json(&server.get("/health").1)["in_flight"] != 12 {
        assert!(started.elapsed() < Duration::from_secs(5), "every request is admitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The stop arrives while all twelve queries are with the (slow) workers.
    let stats = server.stop();
    for client in clients {
        let (status, _, body) = client.join().unwrap();
        assert_eq!(status, 200, "accepted before the stop, answered after it: {body}");
        assert_eq!(json(&body)["predictions"].as_array().unwrap().len(), 3);
    }
    assert_eq!((stats.answered, stats.errors), (12, 0));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "the listener is closed");
}

/// POSTs `body` (with the binary extension's header when `header_length` is given) to the
/// model's v2 infer route: the status, that header of the answer, and its body.
fn infer(server: &Server, path: &str, body: &[u8], header_length: Option<usize>) -> (u16, Option<usize>, Vec<u8>) {
    let mut request = server.agent.post(server.url(path)).header("content-type", "application/json");
    if let Some(n) = header_length {
        request = request.header(v2::HEADER_LENGTH, n.to_string());
    }
    let mut response = request.send(body).expect("the server answers");
    let header = response.headers().get(v2::HEADER_LENGTH).map(|v| v.to_str().unwrap().parse().unwrap());
    (response.status().as_u16(), header, response.body_mut().read_to_vec().unwrap())
}

/// The output of a v2 answer with its rows checked against the model: exact unless listed in
/// `approximate_rows`.
fn check_rows(response: &v2::InferResponse, binary: &[u8], first_query: usize) -> usize {
    let output = &response.outputs[0];
    assert_eq!((output.name.as_str(), output.datatype.as_str()), ("output", "FP32"));
    let values = v2::tensor_values(&response.outputs, binary).unwrap().remove(0);
    let rows = output.shape[0] as usize;
    assert_eq!(output.shape, [rows as i64, C as i64]);
    let parameters = output.parameters.clone().unwrap();
    let approximate: Vec<usize> = parameters
        .get("approximate_rows")
        .and_then(Value::as_str)
        .map(|s| s.split(',').map(|i| i.parse().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(parameters["approximate"].as_bool(), Some(!approximate.is_empty()));
    for (r, row) in values.chunks_exact(C).enumerate() {
        let exact = expected(&query(first_query + r));
        let error = row.iter().zip(&exact).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
        let bound = if approximate.contains(&r) { 1.0 } else { 1e-5 };
        assert!(error < bound, "row {r}: {row:?} vs {exact:?}");
    }
    rows
}

#[test]
fn v2_clients_get_health_metadata_and_answers_in_json_and_binary() {
    let server = Server::start(coordinator(None, 100, 2000));
    let model = server::MODEL;
    // The status says it, and a JSON body too (KServe's client parses it).
    let (status, body) = server.get("/v2/health/live");
    assert_eq!((status, json(&body)), (200, json!({"live": true})));
    let (status, body) = server.get("/v2/health/ready");
    assert_eq!((status, json(&body)), (200, json!({"ready": true})));
    for path in ["/v2/models/smooth/ready", "/v2/models/smooth/versions/1/ready"] {
        let (status, body) = server.get(path);
        assert_eq!((status, json(&body)), (200, json!({"name": model, "ready": true})), "{path}");
    }
    let (status, body) = server.get("/v2");
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["extensions"],
        json!(["binary_tensor_data", "classification", "model_configuration", "statistics"])
    );
    // Triton's model configuration: the batch a request may hold, the tensors without it.
    for path in ["/v2/models/smooth/config", "/v2/models/smooth/versions/1/config"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{body}");
        let config = json(&body);
        assert_eq!((config["name"].as_str(), config["max_batch_size"].as_u64()), (Some(model), Some(MAX_BATCH as u64)));
        assert_eq!(
            config["input"],
            json!([{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [D]}])
        );
        assert_eq!(config["output"][0]["dims"], json!([C]), "{body}");
    }
    for path in ["/v2/models/other/config", "/v2/models/smooth/versions/2/config"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    for path in ["/v2/models/smooth", "/v2/models/smooth/versions/1"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{body}");
        let metadata: v2::ModelMetadata = serde_json::from_str(&body).unwrap();
        assert_eq!(metadata.name, model);
        assert_eq!(
            (metadata.inputs[0].name.as_str(), metadata.inputs[0].shape.as_slice()),
            ("input", &[-1, D as i64][..])
        );
        assert_eq!(metadata.outputs[0].shape, [-1, C as i64]);
    }
    for path in ["/v2/models/other", "/v2/models/smooth/versions/2", "/v2/models/other/ready"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}");
        assert!(json(&body)["error"].as_str().unwrap().contains("model"), "{body}");
    }

    // JSON in, JSON out, the request's id echoed; nested data and FP64 are read too.
    let data: Vec<f32> = (0..4).flat_map(query).collect();
    let request =
        json!({"id": "a-1", "inputs": [{"name": "input", "shape": [4, D], "datatype": "FP32", "data": data}]});
    let (status, header, body) = infer(&server, "/v2/models/smooth/infer", request.to_string().as_bytes(), None);
    assert_eq!((status, header), (200, None), "{}", String::from_utf8_lossy(&body));
    let response: v2::InferResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!((response.id.as_deref(), response.model_name.as_str()), (Some("a-1"), model));
    assert_eq!(check_rows(&response, &[], 0), 4);
    let nested: Vec<Vec<f32>> = (4..6).map(query).collect();
    let request = json!({"inputs": [{"name": "input", "shape": [2, 1, D], "datatype": "FP64", "data": nested}]});
    let (status, _, body) = infer(&server, "/v2/models/smooth/versions/1/infer", request.to_string().as_bytes(), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response: v2::InferResponse = serde_json::from_slice(&body).unwrap();
    assert!(response.id.is_none(), "no id asked, none sent");
    assert_eq!(check_rows(&response, &[], 4), 2);

    // Binary in (FP32 and FP16) and, when asked, binary out.
    for datatype in [v2::DataType::Fp32, v2::DataType::Fp16] {
        let values: Vec<f32> = (6..9).flat_map(query).collect();
        let bytes = datatype.encode(&values);
        let request = json!({
            "inputs": [{"name": "input", "shape": [3, D], "datatype": datatype.name(),
                        "parameters": {"binary_data_size": bytes.len()}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": true}}],
        });
        let (body, header) = v2::join_body(&request, &bytes);
        let (status, header, body) = infer(&server, "/v2/models/smooth/infer", &body, header);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let (response, binary): (v2::InferResponse, _) =
            v2::split_body(&body, header.map(|n| n.to_string()).as_deref()).unwrap();
        assert_eq!(binary.len(), 3 * C * 4, "the output comes back as binary data");
        if datatype == v2::DataType::Fp32 {
            assert_eq!(check_rows(&response, binary, 6), 3);
        }
    }
    let stats = server.stop();
    assert_eq!(stats.errors, 0);
}

/// Parses Triton's classification strings, `"value:index"`, of `rows x columns`; checks each
/// row's are in decreasing order and, for rows decoded exactly, that they are the model's top
/// classes for query `first_query + row`.
fn check_classes(classes: &[String], rows: usize, columns: usize, approximate: &[usize], first_query: usize) {
    assert_eq!(classes.len(), rows * columns, "{classes:?}");
    for (r, row) in classes.chunks_exact(columns).enumerate() {
        let parsed: Vec<(f32, usize)> = row
            .iter()
            .map(|class| {
                let (value, index) = class.split_once(':').unwrap();
                (value.parse().unwrap(), index.parse().unwrap())
            })
            .collect();
        assert!(parsed.windows(2).all(|w| w[0].0 >= w[1].0), "row {r}: {row:?}");
        if !approximate.contains(&r) {
            let exact = expected(&query(first_query + r));
            let mut order: Vec<usize> = (0..C).collect();
            order.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]));
            for (&(value, index), &top) in parsed.iter().zip(&order) {
                assert_eq!(index, top, "row {r}: {row:?} against {exact:?}");
                assert!((value - exact[index]).abs() < 1e-5, "row {r}: {row:?} against {exact:?}");
            }
        }
    }
}

#[test]
fn v2_classification_answers_each_rows_top_classes_as_strings_in_json_binary_and_grpc() {
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use approxifer::serve::grpc::proto::infer_parameter::ParameterChoice::Int64Param;
    use approxifer::serve::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use approxifer::serve::grpc::proto::{InferParameter, ModelInferRequest};
    let server = Server::start(coordinator(None, 100, 2000));
    let approximate_rows = |output: &Value| -> Vec<usize> {
        output["parameters"]["approximate_rows"]
            .as_str()
            .map(|s| s.split(',').map(|i| i.parse().unwrap()).collect())
            .unwrap_or_default()
    };
    for binary in [false, true] {
        let data: Vec<f32> = (0..4).flat_map(query).collect();
        let request = json!({"inputs": [{"name": "input", "shape": [4, D], "datatype": "FP32", "data": data}],
                             "outputs": [{"name": "output", "parameters": {"classification": 2, "binary_data": binary}}]});
        let (status, header, body) = infer(&server, "/v2/models/smooth/infer", request.to_string().as_bytes(), None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let json_len = header.unwrap_or(body.len());
        let response: Value = serde_json::from_slice(&body[..json_len]).unwrap();
        let output = &response["outputs"][0];
        assert_eq!((output["datatype"].as_str(), &output["shape"]), (Some("BYTES"), &json!([4, 2])), "{response}");
        let classes: Vec<String> = if binary {
            let mut bytes = &body[json_len..];
            let mut classes = Vec::new();
            while let Some((length, rest)) = bytes.split_first_chunk::<4>() {
                let (class, rest) = rest.split_at(u32::from_le_bytes(*length) as usize);
                classes.push(String::from_utf8(class.to_vec()).unwrap());
                bytes = rest;
            }
            assert_eq!(output["parameters"]["binary_data_size"].as_u64(), Some((body.len() - json_len) as u64));
            classes
        } else {
            serde_json::from_value(output["data"].clone()).unwrap()
        };
        check_classes(&classes, 4, 2, &approximate_rows(output), 0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://{}", server.inner.grpc);
    let mut client = runtime.block_on(GrpcInferenceServiceClient::connect(url)).unwrap();
    let values: Vec<f32> = (0..3).flat_map(query).collect();
    let request = ModelInferRequest {
        model_name: "smooth".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![3, D as i64],
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "output".into(),
            parameters: std::collections::HashMap::from([(
                "classification".into(),
                InferParameter { parameter_choice: Some(Int64Param(5)) },
            )]),
        }],
        raw_input_contents: vec![v2::DataType::Fp32.encode(&values)],
        ..Default::default()
    };
    let answer = runtime.block_on(client.model_infer(request)).unwrap().into_inner();
    let output = &answer.outputs[0];
    // Five asked of three classes: all three.
    assert_eq!((output.datatype.as_str(), output.shape.as_slice()), ("BYTES", [3, C as i64].as_slice()));
    let (mut bytes, mut classes) = (answer.raw_output_contents[0].as_slice(), Vec::new());
    while let Some((length, rest)) = bytes.split_first_chunk::<4>() {
        let (class, rest) = rest.split_at(u32::from_le_bytes(*length) as usize);
        classes.push(String::from_utf8(class.to_vec()).unwrap());
        bytes = rest;
    }
    let approximate: Vec<usize> =
        match output.parameters.get("approximate_rows").and_then(|p| p.parameter_choice.clone()) {
            Some(approxifer::serve::grpc::proto::infer_parameter::ParameterChoice::StringParam(rows)) => {
                rows.split(',').map(|i| i.parse().unwrap()).collect()
            }
            _ => Vec::new(),
        };
    check_classes(&classes, 3, C, &approximate, 0);
    drop((client, runtime));
    let stats = server.stop();
    assert_eq!((stats.answered, stats.errors), (11, 0));
}

#[test]
fn bad_v2_requests_get_the_protocols_error_body_and_a_4xx() {
    let server = Server::start(coordinator(None, 100, 2000));
    let input = |name: &str, shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]});
    let one = json!(query(0));
    let cases: Vec<(Value, u16)> = vec![
        (input("x", json!([1, D]), "FP32", one.clone()), 400),
        (input("input", json!([1, D + 1]), "FP32", one.clone()), 400),
        (input("input", json!([2, D]), "FP32", one.clone()), 400),
        (input("input", json!([1, D]), "INT8", one.clone()), 400),
        (input("input", json!([D]), "FP32", one.clone()), 400),
        (input("input", json!([1, D]), "FP32", json!(vec!["a"; D])), 400),
        (json!({"inputs": []}), 400),
        (json!({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32"}]}), 400),
        (
            json!({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32", "data": query(0)}],
                   "outputs": [{"name": "logits"}]}),
            400,
        ),
        (input("input", json!([MAX_BATCH + 1, D]), "FP32", json!(vec![0.0; (MAX_BATCH + 1) * D])), 413),
        (
            json!({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32", "data": query(0)}],
                   "outputs": [{"name": "output", "parameters": {"classification": "three"}}]}),
            400,
        ),
        // Extensions not implemented are refused, not answered as if not asked.
        (
            json!({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32", "data": query(0)}],
                   "outputs": [{"name": "output", "parameters": {"shared_memory_region": "out"}}]}),
            400,
        ),
    ];
    for (body, status) in &cases {
        let (got, _, text) = infer(&server, "/v2/models/smooth/infer", body.to_string().as_bytes(), None);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, *status, "{body}: {text}");
        assert!(json(&text)["error"].is_string(), "{body}: {text}");
    }
    let body = input("input", json!([1, D]), "FP32", one).to_string();
    let (status, _, _) = infer(&server, "/v2/models/other/infer", body.as_bytes(), None);
    assert_eq!(status, 404);
    // The binary extension's lengths are checked: a header past the body, bytes left over, a
    // non-finite value.
    let (status, _, _) = infer(&server, "/v2/models/smooth/infer", body.as_bytes(), Some(body.len() + 1));
    assert_eq!(status, 400);
    let mut extra = body.clone().into_bytes();
    extra.extend([0u8; 4]);
    let (status, _, _) = infer(&server, "/v2/models/smooth/infer", &extra, Some(body.len()));
    assert_eq!(status, 400);
    let nan = v2::DataType::Fp32.encode(&[f32::NAN; D]);
    let request = json!({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32",
                                     "parameters": {"binary_data_size": nan.len()}}]});
    let (body, header) = v2::join_body(&request, &nan);
    let (status, _, text) = infer(&server, "/v2/models/smooth/infer", &body, header);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let stats = server.stop();
    assert_eq!((stats.answered, stats.errors), (0, 0));
}

#[test]
fn grpc_clients_send_typed_or_raw_tensors_and_get_raw_answers_or_status_codes() {
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use approxifer::serve::grpc::proto::infer_parameter::ParameterChoice::Int64Param;
    use approxifer::serve::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use approxifer::serve::grpc::proto::{
        InferParameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
        ServerLiveRequest,
    };
    use std::collections::HashMap;
    let server = Server::start(coordinator(None, 100, 2000));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://{}", server.inner.grpc);
    let mut client = runtime.block_on(GrpcInferenceServiceClient::connect(url)).unwrap();
    assert!(runtime.block_on(client.server_live(ServerLiveRequest {})).unwrap().into_inner().live);
    let ready = |name: &str| ModelReadyRequest { name: name.into(), version: String::new() };
    assert!(runtime.block_on(client.model_ready(ready(server::MODEL))).unwrap().into_inner().ready);
    assert!(!runtime.block_on(client.model_ready(ready("other"))).unwrap().into_inner().ready);
    let metadata = runtime
        .block_on(client.model_metadata(ModelMetadataRequest { name: server::MODEL.into(), version: "1".into() }))
        .unwrap()
        .into_inner();
    assert_eq!(metadata.inputs[0].shape, [-1, D as i64]);

    let request =
        |datatype: &str, contents: Option<InferTensorContents>, raw: Vec<Vec<u8>>, rows: i64| ModelInferRequest {
            model_name: server::MODEL.into(),
            id: format!("{datatype}-{rows}"),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: datatype.into(),
                shape: vec![rows, D as i64],
                contents,
                ..Default::default()
            }],
            raw_input_contents: raw,
            ..Default::default()
        };
    let values: Vec<f32> = (0..3).flat_map(query).collect();
    let typed = InferTensorContents { fp32_contents: values.clone(), ..Default::default() };
    let fp64 =
        InferTensorContents { fp64_contents: values.iter().map(|&v| f64::from(v)).collect(), ..Default::default() };
    for request in [
        request("FP32", Some(typed), vec![], 3),
        request("FP64", Some(fp64), vec![], 3),
        request("FP32", None, vec![v2::DataType::Fp32.encode(&values)], 3),
        request("FP16", None, vec![v2::DataType::Fp16.encode(&values)], 3),
    ] {
        let (id, datatype) = (request.id.clone(), request.inputs[0].datatype.clone());
        let answer = runtime.block_on(client.model_infer(request)).unwrap().into_inner();
        assert_eq!(answer.id, id);
        let output = &answer.outputs[0];
        assert_eq!((output.shape.as_slice(), output.datatype.as_str()), (&[3, C as i64][..], "FP32"));
        assert!(output.parameters.contains_key("approximate"));
        let values = v2::DataType::Fp32.decode(&answer.raw_output_contents[0]).unwrap();
        let approximate = output.parameters.contains_key("approximate_rows");
        for (r, row) in values.chunks_exact(C).enumerate() {
            let exact = expected(&query(r));
            let error = row.iter().zip(&exact).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
            // FP16 inputs round the queries themselves.
            let bound = if approximate {
                1.0
            } else if datatype == "FP16" {
                1e-2
            } else {
                1e-5
            };
            assert!(error < bound, "{datatype} row {r}: {row:?} vs {exact:?}");
        }
    }
    let code = |request: ModelInferRequest| runtime.block_on(client.clone().model_infer(request)).unwrap_err().code();
    let mut wrong_name = request("FP32", None, vec![v2::DataType::Fp32.encode(&values)], 3);
    wrong_name.inputs[0].name = "x".into();
    assert_eq!(code(wrong_name), tonic::Code::InvalidArgument);
    assert_eq!(code(request("FP32", None, vec![v2::DataType::Fp32.encode(&values)], 2)), tonic::Code::InvalidArgument);
    assert_eq!(code(request("FP16", None, vec![], 3)), tonic::Code::InvalidArgument);
    assert_eq!(code(request("FP32", None, vec![vec![0; 3]], 3)), tonic::Code::InvalidArgument);
    let mut classes = request("FP32", None, vec![v2::DataType::Fp32.encode(&values)], 3);
    classes.outputs = vec![InferRequestedOutputTensor {
        name: "output".into(),
        parameters: HashMap::from([(
            "classification".into(),
            InferParameter { parameter_choice: Some(Int64Param(-3)) },
        )]),
    }];
    let refused = runtime.block_on(client.clone().model_infer(classes)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("classification"), "{refused:?}");
    let mut other = request("FP32", None, vec![v2::DataType::Fp32.encode(&values)], 3);
    other.model_name = "other".into();
    assert_eq!(code(other), tonic::Code::NotFound);
    let too_many: Vec<f32> = (0..MAX_BATCH + 1).flat_map(query).collect();
    let big = request("FP32", None, vec![v2::DataType::Fp32.encode(&too_many)], (MAX_BATCH + 1) as i64);
    assert_eq!(code(big), tonic::Code::InvalidArgument);
    // The client's connection stays open and nobody drives it, so it never acknowledges the
    // stop: the stop waits the drain limit for it, not forever.
    let stopping = Instant::now();
    let stats = server.stop();
    assert!(stopping.elapsed() < server::DRAIN + Duration::from_secs(3), "{:?}", stopping.elapsed());
    assert_eq!((stats.answered, stats.errors), (12, 0));
    drop((client, runtime));
}

#[test]
fn grpc_streams_answer_every_request_with_failures_in_line_and_model_config_describes_the_model() {
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use approxifer::serve::grpc::proto::infer_parameter::ParameterChoice::StringParam;
    use approxifer::serve::grpc::proto::model_infer_request::InferInputTensor;
    use approxifer::serve::grpc::proto::{DataType, InferParameter, ModelConfigRequest, ModelInferRequest};
    let server = Server::start(coordinator(None, 1000, 2000));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = format!("http://{}", server.inner.grpc);
    let mut client = runtime.block_on(GrpcInferenceServiceClient::connect(url)).unwrap();

    // Triton's model configuration: what a client needs to form requests.
    let asked = |name: &str| ModelConfigRequest { name: name.into(), version: String::new() };
    let config = runtime.block_on(client.model_config(asked(server::MODEL))).unwrap().into_inner().config.unwrap();
    assert_eq!((config.name.as_str(), config.max_batch_size), (server::MODEL, MAX_BATCH as i32));
    let (input, output) = (&config.input[0], &config.output[0]);
    assert_eq!((input.name.as_str(), input.dims.as_slice()), ("input", &[D as i64][..]));
    assert_eq!((output.name.as_str(), output.dims.as_slice()), ("output", &[C as i64][..]));
    assert_eq!((input.data_type, output.data_type), (DataType::TypeFp32 as i32, DataType::TypeFp32 as i32));
    let refused = runtime.block_on(client.model_config(asked("other"))).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);

    // A hundred requests on one stream (more than wait for a slot at once), the second for a
    // model not served: an answer each, the failure as an error message with its id, the
    // others' rows the model's.
    let request = |i: usize, model: &str| {
        let values: Vec<f32> = (2 * i..2 * i + 2).flat_map(query).collect();
        ModelInferRequest {
            model_name: model.into(),
            id: format!("q{i}"),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![2, D as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![v2::DataType::Fp32.encode(&values)],
            ..Default::default()
        }
    };
    let requests: Vec<_> = (0..100).map(|i| request(i, if i == 1 { "other" } else { server::MODEL })).collect();
    let answers = runtime.block_on(async {
        let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
        let mut answers = Vec::new();
        while let Some(answer) = stream.message().await.unwrap() {
            answers.push(answer);
        }
        answers
    });
    let mut ids: Vec<String> = answers.iter().map(|a| a.infer_response.as_ref().unwrap().id.clone()).collect();
    ids.sort();
    let mut expected_ids: Vec<String> = (0..100).map(|i| format!("q{i}")).collect();
    expected_ids.sort();
    assert_eq!(ids, expected_ids);
    let mut exact_rows = 0;
    for answer in &answers {
        let response = answer.infer_response.as_ref().unwrap();
        if response.id == "q1" {
            assert!(answer.error_message.contains("unknown model 'other'"), "{answer:?}");
            assert!(response.outputs.is_empty());
            continue;
        }
        assert!(answer.error_message.is_empty(), "{answer:?}");
        let first: usize = response.id[1..].parse().unwrap();
        let approximate: Vec<usize> = match response.outputs[0].parameters.get("approximate_rows") {
            Some(InferParameter { parameter_choice: Some(StringParam(rows)) }) => {
                rows.split(',').map(|r| r.parse().unwrap()).collect()
            }
            _ => Vec::new(),
        };
        let values = v2::DataType::Fp32.decode(&response.raw_output_contents[0]).unwrap();
        assert_eq!(values.len(), 2 * C, "{}", response.id);
        // Rows decoded exactly are the model's own answers to this request's queries: its
        // rows, in order. (An approximate row's accuracy is another test's: with a hundred
        // requests at once on two cores some groups decode from their first N - S answers.)
        for (r, row) in values.chunks_exact(C).enumerate().filter(|(r, _)| !approximate.contains(r)) {
            let exact = expected(&query(2 * first + r));
            let error = row.iter().zip(&exact).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
            assert!(error < 1e-5, "{}: row {r}: {row:?} vs {exact:?}", response.id);
            exact_rows += 1;
        }
        assert!(values.iter().all(|v| v.is_finite()), "{}", response.id);
    }
    // The code is systematic: most rows come straight from a worker's answer.
    assert!(exact_rows >= 100, "{exact_rows} of 198 rows exact");
    let stats = server.stop();
    assert_eq!((stats.answered, stats.errors), (198, 0));
    drop((client, runtime));
}

#[test]
fn statistics_count_the_requests_queries_and_batches_and_their_time_over_rest_and_grpc() {
    use approxifer::serve::grpc::proto::ModelStatisticsRequest;
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    let server = Server::start(coordinator(None, 100, 2000));
    let started = std::time::SystemTime::now();
    let (status, body) = server.get("/v2/models/smooth/stats");
    assert_eq!(status, 200, "{body}");
    let none: v2::StatisticsResponse = serde_json::from_str(&body).unwrap();
    assert_eq!((none.model_stats[0].inference_count, none.model_stats[0].last_inference), (0, 0), "{body}");
    // Two requests of three queries answered, one failed (another model).
    let request = |first: usize| {
        let data: Vec<f32> = (first..first + 3).flat_map(query).collect();
        json!({"inputs": [{"name": "input", "shape": [3, D], "datatype": "FP32", "data": data}]}).to_string()
    };
    for (path, first, expected) in
        [("/v2/models/smooth/infer", 0, 200), ("/v2/models/smooth/infer", 3, 200), ("/v2/models/other/infer", 6, 404)]
    {
        let (status, _, _) = infer(&server, path, request(first).as_bytes(), None);
        assert_eq!(status, expected, "{path}");
    }
    for path in ["/v2/models/stats", "/v2/models/smooth/stats", "/v2/models/smooth/versions/1/stats"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let response: v2::StatisticsResponse = serde_json::from_str(&body).unwrap();
        let model = &response.model_stats[0];
        let stats = model.inference_stats;
        assert_eq!((model.name.as_str(), model.version.as_str()), (server::MODEL, "1"), "{body}");
        assert_eq!((model.inference_count, stats.success.count, stats.fail.count), (6, 2, 1), "{body}");
        assert!(model.execution_count >= 1 && stats.queue.count == 6, "{body}");
        // Each batch's coded queries went to several workers (as many as its code has nodes).
        assert!(stats.compute_infer.count > model.execution_count && stats.compute_infer.ns > 0, "{body}");
        assert!(stats.success.ns > 0 && stats.compute_output.count == model.execution_count, "{body}");
        let since_epoch =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!((since_epoch(started)..=since_epoch(std::time::SystemTime::now())).contains(&model.last_inference));
    }
    assert_eq!(server.get("/v2/models/other/stats").0, 404);
    // gRPC: the same books.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://{}", server.inner.grpc);
    let mut client = runtime.block_on(GrpcInferenceServiceClient::connect(url)).unwrap();
    for name in ["", server::MODEL] {
        let asked = ModelStatisticsRequest { name: name.into(), version: String::new() };
        let response = runtime.block_on(client.model_statistics(asked)).unwrap().into_inner();
        let model = &response.model_stats[0];
        let stats = model.inference_stats.unwrap();
        assert_eq!((model.inference_count, stats.success.unwrap().count, stats.fail.unwrap().count), (6, 2, 1));
        assert_eq!(stats.queue.unwrap().count, 6);
    }
    let other = ModelStatisticsRequest { name: "other".into(), version: String::new() };
    assert_eq!(runtime.block_on(client.model_statistics(other)).unwrap_err().code(), tonic::Code::NotFound);
    drop((client, runtime));
    server.stop();
}

#[test]
fn the_repository_index_lists_the_model_served_and_loading_another_is_refused() {
    use approxifer::serve::grpc::proto::RepositoryIndexRequest;
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    let server = Server::start(coordinator(None, 100, 2000));
    let index = |body: &str| {
        let mut response = server.agent.post(server.url("/v2/repository/index")).send(body).unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    };
    let served = json!([{"name": server::MODEL, "version": "1", "state": "READY"}]);
    for body in ["", "{}", r#"{"ready": true}"#, r#"{"repository_name": "", "ready": false}"#] {
        let (status, text) = index(body);
        assert_eq!((status, json(&text)), (200, served.clone()), "{body:?}");
    }
    let (status, text) = index("{not json");
    assert_eq!(status, 400, "{text}");
    for path in ["/v2/repository/models/other/load", "/v2/repository/models/smooth/unload"] {
        let mut response = server.agent.post(server.url(path)).send("").unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        assert_eq!(response.status().as_u16(), 400, "{path}");
        assert!(json(&text)["error"].as_str().unwrap().contains("fixed when it starts"), "{text}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://{}", server.inner.grpc);
    let mut client = runtime.block_on(GrpcInferenceServiceClient::connect(url)).unwrap();
    let asked = RepositoryIndexRequest { repository_name: String::new(), ready: true };
    let models = runtime.block_on(client.repository_index(asked)).unwrap().into_inner().models;
    let listed: Vec<_> = models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str())).collect();
    assert_eq!(listed, [(server::MODEL, "1", "READY")]);
    drop((client, runtime));
    server.stop();
}

/// A model that takes 150 ms a batch.
fn slow_model() -> approxifer::serve::ServedModel {
    let inner = model();
    Arc::new(move |x: burn::tensor::Tensor<2>| {
        std::thread::sleep(Duration::from_millis(150));
        inner.forward(x)
    })
}

/// How the impatient clients call.
#[derive(Clone, Copy, Debug)]
enum Impatient {
    /// REST, each closing its connection.
    Rest,
    /// gRPC, each cancelling its call on one connection that stays open.
    Grpc,
    /// One gRPC stream carrying every client's request, dropped.
    GrpcStream,
}

/// Six clients each send three queries to `scheme` at once and hang up after 60 ms (`how`):
/// the scheme's books once it has let go of every query, at least `least_cancelled` of them
/// cancelled (as `/metrics` counts them).
fn impatient_clients(scheme: Box<dyn Scheme>, how: Impatient, least_cancelled: usize) -> Stats {
    use approxifer::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use approxifer::serve::grpc::proto::{ModelInferRequest, model_infer_request::InferInputTensor};
    let server = Server::start(scheme);
    let clients = 6;
    let patience = Duration::from_millis(60);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let request = |client: usize| {
        let values: Vec<f32> = (client * 3..client * 3 + 3).flat_map(query).collect();
        ModelInferRequest {
            model_name: server::MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![3, D as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![v2::DataType::Fp32.encode(&values)],
            ..Default::default()
        }
    };
    let channel = (!matches!(how, Impatient::Rest)).then(|| {
        runtime.block_on(GrpcInferenceServiceClient::connect(format!("http://{}", server.inner.grpc))).unwrap()
    });
    match (how, &channel) {
        (Impatient::Grpc, Some(channel)) => {
            let calls: Vec<_> = (0..clients)
                .map(|client| {
                    let (mut channel, request) = (channel.clone(), request(client));
                    runtime.spawn(
                        async move { tokio::time::timeout(patience, channel.model_infer(request)).await.is_err() },
                    )
                })
                .collect();
            for (client, call) in calls.into_iter().enumerate() {
                assert!(runtime.block_on(call).unwrap(), "client {client} gave up before its answer");
            }
        }
        (Impatient::GrpcStream, Some(channel)) => {
            let (mut channel, requests) = (channel.clone(), (0..clients).map(request).collect::<Vec<_>>());
            let gave_up = runtime.block_on(async move {
                let answers = async {
                    let mut stream = channel.model_stream_infer(tokio_stream::iter(requests)).await?.into_inner();
                    while stream.message().await?.is_some() {}
                    Ok::<_, tonic::Status>(())
                };
                tokio::time::timeout(patience, answers).await.is_err()
            });
            assert!(gave_up, "the stream's answers all came before its client gave up");
        }
        _ => {
            let impatient: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(patience)).build().into();
            std::thread::scope(|scope| {
                for client in 0..clients {
                    let (impatient, addr) = (&impatient, server.addr);
                    scope.spawn(move || {
                        let sent = impatient
                            .post(format!("http://{addr}/v1/predict"))
                            .header("content-type", "application/json")
                            .send(rows(client * 3..client * 3 + 3).to_string());
                        assert!(sent.is_err(), "client {client} hung up before its answer");
                    });
                }
            });
        }
    }
    let metrics = metrics_once(&server, "approxifer_cancelled_queries_total", least_cancelled as f64);
    assert!(sample(&metrics, "approxifer_cancelled_queries_total") >= least_cancelled as f64, "{metrics}");
    let stats = server.stop();
    drop((channel, runtime));
    assert_eq!(stats.answered + stats.errors + stats.cancelled, 3 * clients as u64, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    stats
}

#[test]
fn a_client_that_goes_away_has_its_queries_dropped_not_computed() {
    // Coded: five slow workers, each client's queries one group (K = 3). The first batch runs;
    // the others wait in the workers' queues and are cancelled once the coordinator sees
    // nobody waits for them (at the first answers), so no worker runs more than the first two
    // batches, where all six would run. Over REST, over gRPC and on a gRPC stream.
    for how in [Impatient::Rest, Impatient::Grpc, Impatient::GrpcStream] {
        let code = Code::new(CodeParams::builder(3, 5).stragglers(2).build().unwrap()).unwrap();
        let workers: Vec<Arc<dyn Worker>> = (0..5)
            .map(|i| Arc::new(LocalWorker::start(i, slow_model(), Device::flex(), 1000)) as Arc<dyn Worker>)
            .collect();
        let config = CoordinatorConfig {
            hedge_after: None,
            max_queue_delay: Duration::ZERO,
            ..coordinator_config(code, None, 1000, Duration::from_secs(10))
        };
        let stats = impatient_clients(Box::new(Coordinator::start(config, workers).unwrap()), how, 12);
        for (w, worker) in stats.workers.iter().enumerate() {
            assert!(worker.answers <= 2, "{how:?}: worker {w} ran {} batches of 6: {stats:?}", worker.answers);
        }
    }
    // Uncoded: one slow worker, whatever batches the queries formed; it runs the first one or
    // two, where it would run them all (at least six).
    let worker: Arc<dyn Worker> = Arc::new(LocalWorker::start(0, slow_model(), Device::flex(), 1000));
    let config = BaselineConfig {
        policy: Policy::Uncoded,
        input_len: D,
        output_len: C,
        max_batch: 3,
        max_queue_delay: Duration::ZERO,
        deadline: Duration::from_secs(10),
        capacity: 1000,
        faults: None,
    };
    let stats = impatient_clients(Box::new(Baseline::start(config, vec![worker]).unwrap()), Impatient::Rest, 9);
    assert!(stats.workers[0].answers <= 2, "the worker ran {} batches: {stats:?}", stats.workers[0].answers);
}
