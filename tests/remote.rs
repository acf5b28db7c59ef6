//! Remote workers: the coordinator and the baselines over v2 servers on real sockets, each
//! server what `approxifer worker` is (one replica behind an uncoded batcher). Answers equal
//! those over local workers; a server that is down, dies mid-run, starts late or answers too
//! slowly is a straggler, never a lost query.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approxifer::kernels::{Code, CodeParams};
use approxifer::serve::{
    Baseline, BaselineConfig, Coordinator, CoordinatorConfig, Endpoint, LocalWorker, Policy, RemoteConfig,
    RemoteWorker, ServedModel, Worker,
};
use burn::tensor::{Device, Tensor};
use server::{Addrs, MODEL, Server, any_ports};
use support::{C, D, coordinator_config, expected, model, query};

#[path = "support/server.rs"]
mod server;
mod support;

/// Free ports: bound, read and let go (nothing else in the test binds ports by number).
fn free_ports() -> Addrs {
    let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    (free(), free())
}

/// Remote worker `i` in front of the server at `addrs`, in turn over gRPC, REST with binary
/// tensors and REST with JSON, so that every encoding is exercised.
fn remote(i: usize, (rest, grpc): Addrs, timeout: Duration) -> Arc<RemoteWorker> {
    let url = match i % 3 {
        0 => format!("grpc://{grpc}"),
        _ => format!("http://{rest}"),
    };
    let mut endpoint = Endpoint::parse(&url, MODEL).unwrap();
    endpoint.binary = Some(i % 3 == 1);
    let config =
        RemoteConfig { endpoint, input_shape: vec![D], output_len: C, timeout, concurrency: 2, capacity: 1000 };
    Arc::new(RemoteWorker::connect(i, config))
}

fn coordinator(k: usize, n: usize, workers: Vec<Arc<dyn Worker>>, deadline: Duration) -> Coordinator {
    let code = Code::new(CodeParams::builder(k, n).stragglers(n - k).build().unwrap()).unwrap();
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(50)),
        ..coordinator_config(code, None, 10_000, deadline)
    };
    Coordinator::start(config, workers).unwrap()
}

/// As [`coordinator`], with batches sent only when full or after a second: queries submitted
/// together are grouped the same way on every run, however loaded the machine (with the 2 ms
/// delay a descheduled coordinator may send the first query of a burst alone, coded in a group
/// of its own, which decodes to another approximation).
fn coordinator_grouping_alike(k: usize, n: usize, workers: Vec<Arc<dyn Worker>>) -> Coordinator {
    let code = Code::new(CodeParams::builder(k, n).stragglers(n - k).build().unwrap()).unwrap();
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(50)),
        max_queue_delay: Duration::from_secs(1),
        ..coordinator_config(code, None, 10_000, Duration::from_secs(10))
    };
    Coordinator::start(config, workers).unwrap()
}

/// Answers to queries `range`, submitted at once.
fn answers(scheme: &Coordinator, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
    let tickets = scheme.submit_all(range.map(query).collect()).unwrap();
    tickets.iter().map(|t| t.recv_timeout(Duration::from_secs(20)).unwrap().expect("answered").output).collect()
}

#[test]
fn a_coordinator_over_remote_workers_answers_as_one_over_local_workers() {
    // S = 0: every worker's answer is used, so both runs decode the same answers.
    let servers: Vec<Server> = (0..3).map(|_| Server::worker_on(any_ports(), model())).collect();
    let remote_workers: Vec<Arc<dyn Worker>> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| remote(i, (s.addr, s.grpc), Duration::from_secs(10)) as Arc<dyn Worker>)
        .collect();
    let local_workers: Vec<Arc<dyn Worker>> =
        (0..3).map(|i| Arc::new(LocalWorker::start(i, model(), Device::flex(), 100)) as Arc<dyn Worker>).collect();
    let over_remote = coordinator_grouping_alike(3, 3, remote_workers);
    let over_local = coordinator_grouping_alike(3, 3, local_workers);
    // Where each worker runs, as /metrics tells an operator: each server's model URL.
    let urls: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| match i % 3 {
            0 => format!("grpc://{}/v2/models/{MODEL}", s.grpc),
            _ => format!("http://{}/v2/models/{MODEL}", s.addr),
        })
        .collect();
    assert_eq!(over_remote.worker_locations(), urls);
    assert!(
        over_local.worker_locations().iter().all(|l| l.starts_with("local ")),
        "{:?}",
        over_local.worker_locations()
    );
    // 26 queries: full groups in a full batch, more full groups, and a partial group of 2.
    let (far, near) = (answers(&over_remote, 0..26), answers(&over_local, 0..26));
    for (i, (a, b)) in far.iter().zip(&near).enumerate() {
        let error = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(error < 1e-5, "query {i}: {a:?} over remote workers, {b:?} over local ones");
        let exact = expected(&query(i));
        assert!(a.iter().zip(&exact).all(|(x, e)| (x - e).abs() < 1.0), "query {i} approximates the model");
    }
    let stats = over_remote.shutdown();
    assert_eq!((stats.answered, stats.errors), (26, 0));
    for server in servers {
        assert!(server.stop().answered > 0, "every server did its share");
    }
}

/// A model that takes `delay` per batch.
fn slow(delay: Duration) -> ServedModel {
    let inner = model();
    Arc::new(move |x: Tensor<2>| {
        std::thread::sleep(delay);
        inner.forward(x)
    })
}

#[test]
fn servers_that_are_down_die_start_late_or_answer_late_are_stragglers_not_errors() {
    // K = 2, N = 5 (S = 3): worker 3's server is not there at first, worker 4's is too slow
    // for the timeout, and worker 0's is stopped mid-run.
    let late_addrs = free_ports();
    let mut servers: Vec<Option<Server>> = (0..3).map(|_| Some(Server::worker_on(any_ports(), model()))).collect();
    let slow_server = Server::worker_on(any_ports(), slow(Duration::from_millis(300)));
    let timeout = Duration::from_millis(100);
    let mut addrs: Vec<Addrs> = servers.iter().map(|s| s.as_ref().map(|s| (s.addr, s.grpc)).unwrap()).collect();
    addrs.extend([late_addrs, (slow_server.addr, slow_server.grpc)]);
    let workers: Vec<Arc<RemoteWorker>> = addrs.iter().enumerate().map(|(i, &a)| remote(i, a, timeout)).collect();
    assert!(!workers[3].is_up(), "nobody listens on worker 3's port yet");
    let shared: Vec<Arc<dyn Worker>> = workers.iter().map(|w| w.clone() as Arc<dyn Worker>).collect();
    let scheme = coordinator(2, 5, shared, Duration::from_secs(5));

    let check = |range: std::ops::Range<usize>| {
        for (i, output) in range.clone().zip(answers(&scheme, range)) {
            let exact = expected(&query(i));
            assert!(output.iter().zip(&exact).all(|(x, e)| (x - e).abs() < 1.0), "query {i}: {output:?}");
        }
    };
    check(0..60);
    servers[0].take().unwrap().stop();
    check(60..120);
    assert!(!workers[0].is_up(), "a stopped server is taken out");
    // The late server comes up on its port; the next probe finds it.
    let late = Server::worker_on(late_addrs, model());
    let started = Instant::now();
    let mut next = 120;
    while workers[3].answered() == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the late server is probed again and used");
        check(next..next + 12);
        next += 12;
    }
    // Its first answers are late by now or soon (a request waits up to the 100 ms timeout).
    while workers[4].failed() == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the slow server's answers time out");
        check(next..next + 12);
        next += 12;
    }
    let stats = scheme.shutdown();
    assert_eq!((stats.answered, stats.errors), (next as u64, 0), "every query answered");
    assert!(late.stop().answered > 0);
}

/// The uncoded baseline, each query sent alone and at once, with a 5 s deadline.
fn uncoded_one_query_per_batch() -> BaselineConfig {
    BaselineConfig {
        policy: Policy::Uncoded,
        input_len: D,
        output_len: C,
        max_batch: 1,
        max_queue_delay: Duration::ZERO,
        deadline: Duration::from_secs(5),
        capacity: 100,
        faults: None,
    }
}

#[test]
fn an_uncoded_baseline_passes_over_a_remote_worker_that_is_down() {
    let up = Server::worker_on(any_ports(), model());
    let workers: Vec<Arc<dyn Worker>> =
        vec![remote(0, free_ports(), Duration::from_secs(5)), remote(1, (up.addr, up.grpc), Duration::from_secs(5))];
    let baseline = Baseline::start(uncoded_one_query_per_batch(), workers).unwrap();
    let tickets: Vec<_> = (0..20).map(|i| baseline.submit(query(i)).unwrap()).collect();
    for (i, ticket) in tickets.iter().enumerate() {
        let answer = ticket.recv_timeout(Duration::from_secs(10)).unwrap().expect("answered by the server that is up");
        let error = answer.output.iter().zip(expected(&query(i))).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
        assert!(error < 1e-5, "query {i}");
    }
    assert_eq!(baseline.shutdown().errors, 0);
}

#[test]
fn an_uncoded_baseline_sends_a_batch_its_server_failed_to_another_at_once() {
    // Worker 0's server is ready and fails every inference; worker 1's answers. A batch sent
    // to worker 0 goes to worker 1 once the failure is known, as a load balancer retries,
    // where it waited for its deadline and failed.
    let (failing, inferences) = ready_but_failing();
    let up = Server::worker_on(any_ports(), model());
    let workers: Vec<Arc<dyn Worker>> = vec![
        remote(1, (failing, failing), Duration::from_secs(5)),
        remote(4, (up.addr, up.grpc), Duration::from_secs(5)),
    ];
    let baseline = Baseline::start(uncoded_one_query_per_batch(), workers).unwrap();
    let started = Instant::now();
    for round in 0..8 {
        let tickets: Vec<_> = (0..4).map(|i| baseline.submit(query(round * 4 + i)).unwrap()).collect();
        for (i, ticket) in tickets.iter().enumerate() {
            let answer = ticket.recv_timeout(Duration::from_secs(10)).unwrap().expect("answered");
            let exact = expected(&query(round * 4 + i));
            assert!(answer.output.iter().zip(&exact).all(|(a, e)| (a - e).abs() < 1e-5), "query {i} of round {round}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() < Duration::from_secs(4), "no batch waited for its deadline: {:?}", started.elapsed());
    assert!(!inferences.lock().unwrap().is_empty(), "the failing server was sent batches");
    assert_eq!(baseline.shutdown().errors, 0);
}

/// Two queries at a time, `pause` apart, while `more` says so, each answer checked against
/// the model's own (a `K = 1` code decodes exactly); returns how many were asked.
fn exact_pairs_while(scheme: &Coordinator, pause: Duration, more: impl Fn() -> bool) -> u64 {
    let mut next = 0;
    while more() {
        for (i, output) in (next..next + 2).zip(answers(scheme, next..next + 2)) {
            let exact = expected(&query(i));
            assert!(output.iter().zip(&exact).all(|(x, e)| (x - e).abs() < 1e-4), "query {i}: {output:?}");
        }
        next += 2;
        std::thread::sleep(pause);
    }
    next as u64
}

/// What a [`scripted`] server answers its `i`-th inference (from 0), sent in binary data or
/// not: `None` the model's answer (in JSON), else an error status and its body.
type Script = fn(usize, bool) -> Option<(&'static str, &'static str)>;

/// A v2 REST server that is ready, describes model [`MODEL`] and answers inferences as
/// `script` says; returns its address and, per inference it was sent, whether in binary data.
fn scripted(script: Script) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<bool>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        head.push_str(&line.to_ascii_lowercase());
                        line.clear();
                    }
                    if head.is_empty() {
                        return;
                    }
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
                    };
                    let length = header("content-length").map_or(0, |v| v.parse().unwrap());
                    let mut body = Vec::new();
                    reader.by_ref().take(length).read_to_end(&mut body).unwrap();
                    let (status, body) = if head.starts_with("post") {
                        let binary = header("inference-header-content-length");
                        let i = {
                            let mut log = log.lock().unwrap();
                            log.push(binary.is_some());
                            log.len() - 1
                        };
                        match script(i, binary.is_some()) {
                            Some((status, message)) => (status, message.to_owned()),
                            None => ("200 OK", model_answer(&body, binary.map(|n| n.parse().unwrap()))),
                        }
                    } else if head.contains("/ready ") {
                        ("200 OK", String::new())
                    } else {
                        let tensor = |name: &str, len: usize| serde_json::json!({"name": name, "datatype": "FP32", "shape": [-1, len]});
                        (
                            "200 OK",
                            serde_json::json!({"name": MODEL, "inputs": [tensor("x", D)], "outputs": [tensor("y", C)]})
                                .to_string(),
                        )
                    };
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, sent)
}

/// The v2 answer, in JSON, of the support model to the inference request `body` (its JSON
/// header `header_length` bytes long, then the input's binary data, where given).
fn model_answer(body: &[u8], header_length: Option<usize>) -> String {
    let header: serde_json::Value = serde_json::from_slice(&body[..header_length.unwrap_or(body.len())]).unwrap();
    let values: Vec<f32> = match header_length {
        Some(n) => body[n..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        None => header["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
    };
    let outputs: Vec<f32> = values.chunks_exact(D).flat_map(expected).collect();
    let rows = values.len() / D;
    serde_json::json!({"model_name": MODEL, "outputs": [{"name": "y", "datatype": "FP32", "shape": [rows, C], "data": outputs}]})
        .to_string()
}

/// A server that is ready and fails every inference with status 500 and a Python traceback
/// (what MLServer does with a body it cannot parse).
fn ready_but_failing() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<bool>>>) {
    scripted(|_, _| {
        Some((
            "500 Internal Server Error",
            "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad request\n",
        ))
    })
}

#[test]
fn a_server_ready_but_failing_every_inference_is_tried_ever_more_rarely() {
    // K = 1, N = 2: worker 0 answers every query; worker 1's server says it is ready and fails
    // whatever it is sent. Each failure doubles the wait before it is tried again (100 ms,
    // 200 ms, ...): a probe that succeeds does not start the backoff over, only an answer does.
    let (failing, inferences) = ready_but_failing();
    let up = Server::worker_on(any_ports(), model());
    let workers: Vec<Arc<dyn Worker>> = vec![
        remote(0, (up.addr, up.grpc), Duration::from_secs(5)),
        remote(1, (failing, failing), Duration::from_secs(5)),
    ];
    let scheme = coordinator(1, 2, workers, Duration::from_secs(5));
    let started = Instant::now();
    let asked =
        exact_pairs_while(&scheme, Duration::from_millis(10), || started.elapsed() < Duration::from_millis(1600));
    let stats = scheme.shutdown();
    assert_eq!((stats.answered, stats.errors), (asked, 0), "every query answered");
    // Tried at about 0, 0.1, 0.3, 0.7 and 1.5 s, one request each (REST, binary): at most 6
    // here, where starting the backoff over at each probe tried it every 100 ms.
    let tried = inferences.lock().unwrap().len();
    assert!((2..=6).contains(&tried), "{tried} inferences sent in 1.6 s to a server that fails them all");
}

#[test]
fn a_straggling_servers_calls_are_cancelled_once_their_batch_is_decoded_and_it_drops_their_work() {
    // K = 2, N = 3: two servers answer at once, the third takes 500 ms a batch. Every batch
    // decodes from the first two; the straggler's calls (gRPC, up to eight in flight) are then
    // cancelled, and its server (what `approxifer worker` is) drops the work of those still
    // queued: it computes one or two batches of the eight it was sent, where it computed all.
    let servers: Vec<Server> = vec![
        Server::worker_on(any_ports(), model()),
        Server::worker_on(any_ports(), model()),
        Server::worker_on(any_ports(), slow(Duration::from_millis(500))),
    ];
    let workers: Vec<Arc<dyn Worker>> = servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            let endpoint = Endpoint::parse(&format!("grpc://{}", server.grpc), MODEL).unwrap();
            let config = RemoteConfig {
                endpoint,
                input_shape: vec![D],
                output_len: C,
                timeout: Duration::from_secs(10),
                concurrency: 8,
                capacity: 1000,
            };
            Arc::new(RemoteWorker::connect(i, config)) as Arc<dyn Worker>
        })
        .collect();
    let scheme = coordinator(2, 3, workers, Duration::from_secs(10));
    let groups = 8;
    for group in 0..groups {
        for (i, output) in (2 * group..2 * group + 2).zip(answers(&scheme, 2 * group..2 * group + 2)) {
            let exact = expected(&query(i));
            assert!(output.iter().zip(&exact).all(|(x, e)| (x - e).abs() < 1.0), "query {i}: {output:?}");
        }
    }
    let stats = scheme.shutdown();
    assert_eq!((stats.answered, stats.errors), (2 * groups as u64, 0));
    assert!(stats.workers[2].requests >= groups as u64 - 1, "the straggler was sent the batches: {stats:?}");
    let straggler = servers.into_iter().last().unwrap().stop();
    assert!(
        straggler.workers[0].answers <= 2,
        "the straggler computed {} batches: {straggler:?}",
        straggler.workers[0].answers
    );
    assert!(straggler.cancelled >= 6, "{straggler:?}");
}

#[test]
fn a_rest_worker_moves_to_json_for_a_server_that_refuses_binary_data_not_for_one_briefly_overloaded() {
    // K = 1, N = 2, each worker left to find out whether its server takes binary data. One
    // server refuses binary data (status 500) and takes JSON; the other takes either and is
    // overloaded for its first inference (status 503), which its JSON retry would have outlived.
    let (refusing, refusing_sent) = scripted(|_, binary| binary.then_some(("500 Internal Server Error", "no binary")));
    let (busy, busy_sent) =
        scripted(|i, _| (i == 0).then_some(("503 Service Unavailable", "{\"error\": \"overloaded\"}")));
    let negotiating = |i: usize, addr: std::net::SocketAddr| -> Arc<dyn Worker> {
        let endpoint = Endpoint::parse(&format!("http://{addr}"), MODEL).unwrap();
        assert_eq!(endpoint.binary, None);
        let timeout = Duration::from_secs(5);
        let config =
            RemoteConfig { endpoint, input_shape: vec![D], output_len: C, timeout, concurrency: 1, capacity: 1000 };
        Arc::new(RemoteWorker::connect(i, config))
    };
    let scheme = coordinator(1, 2, vec![negotiating(0, refusing), negotiating(1, busy)], Duration::from_secs(5));
    let started = Instant::now();
    let enough = || refusing_sent.lock().unwrap().len() >= 4 && busy_sent.lock().unwrap().len() >= 4;
    let asked = exact_pairs_while(&scheme, Duration::from_millis(20), || {
        !enough() && started.elapsed() < Duration::from_secs(5)
    });
    let stats = scheme.shutdown();
    assert_eq!((stats.answered, stats.errors), (asked, 0), "every query answered");
    let (refusing_sent, busy_sent) = (refusing_sent.lock().unwrap(), busy_sent.lock().unwrap());
    assert!(refusing_sent.len() >= 4 && busy_sent.len() >= 4, "{refusing_sent:?} {busy_sent:?}");
    // Binary data once, then JSON for good.
    assert!(refusing_sent[0] && refusing_sent[1..].iter().all(|&binary| !binary), "{refusing_sent:?}");
    // Binary data throughout: a 503 is no refusal of it.
    assert!(busy_sent.iter().all(|&binary| binary), "{busy_sent:?}");
}
