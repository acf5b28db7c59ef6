//! `approxifer serve`'s HTTP front end on a real socket: predictions, typed errors for every
//! bad request, overload, `/health`, Prometheus `/metrics`, and a graceful shutdown that
//! answers what it accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use approxifer::kernels::{Code, CodeParams, Layout, Locator};
use approxifer::serve::http::{HttpConfig, serve};
use approxifer::serve::{
    Codec, Coordinator, CoordinatorConfig, FaultPlan, Latency, LocalWorker, Scheme, Stats, Worker, WorkerFaults,
};
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{C, D, expected, model, query};

mod support;

const MAX_BATCH: usize = 8;

/// A coordinator over `K = 3`, `N = 5` (systematic) local workers meeting `faults`.
fn coordinator(faults: Option<FaultPlan>, capacity: usize, deadline_ms: u64) -> Box<dyn Scheme> {
    let code = Code::new(CodeParams::builder(3, 5).stragglers(2).layout(Layout::Systematic).build().unwrap()).unwrap();
    let workers: Vec<Arc<dyn Worker>> =
        (0..5).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 1000)) as Arc<dyn Worker>).collect();
    let config = CoordinatorConfig {
        code,
        input_len: D,
        output_len: C,
        max_batch: 8,
        max_queue_delay: Duration::from_millis(2),
        deadline: Duration::from_millis(deadline_ms),
        capacity,
        faults: faults.map(|plan| (plan, 3)),
        codec: Codec::Cpu,
        hedge_after: None,
        locator: Locator::Robust,
    };
    Box::new(Coordinator::start(config, workers).unwrap())
}

/// A server on an ephemeral port, in its own runtime.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<Stats>>>,
    agent: ureq::Agent,
}

impl Server {
    fn start(scheme: Box<dyn Scheme>) -> Server {
        let config = HttpConfig {
            scheme: "approxifer".into(),
            input_len: D,
            output_len: C,
            max_batch: MAX_BATCH,
            max_body_bytes: 4096,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).map_err(std::io::Error::other)?;
                serve(listener, scheme, config, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server starts");
        Server { addr, stop: Some(stop), thread: Some(thread), agent: agent() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn post(&self, body: &str) -> (u16, Option<String>, String) {
        post(&self.agent, self.addr, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.agent.get(self.url(path)).call().expect("the server answers");
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    fn stop(mut self) -> Stats {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap().expect("the server stops cleanly")
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
