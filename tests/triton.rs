//! NVIDIA Triton Inference Server as the coordinator's workers: a third-party v2 server (from
//! the PyPI package nvidia-pytriton, installed by scripts/triton.sh) running the embedded
//! LeNet-5 with numpy in its Python backend (scripts/triton/), behind `approxifer serve`.

#[path = "support/process.rs"]
mod process;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use approxifer::kernels::{Code, CodeParams, NodeFamily, cpu};
use process::Running;
use serde_json::Value;

/// What the Triton servers call the model (the folder's name in their repository).
const MODEL: &str = "lenet5";
const IMAGE: usize = 28 * 28;
const CLASSES: usize = 10;

/// The folder scripts/triton.sh installed Triton into.
fn triton_dir() -> PathBuf {
    let dir = std::env::var_os("APPROXIFER_TRITON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/triton"));
    assert!(dir.join("tritonserver").exists(), "{}: run scripts/triton.sh (scripts/test.sh does)", dir.display());
    dir
}

/// A model repository under `dir` holding the embedded LeNet-5 as model [`MODEL`].
fn repository(dir: &Path) -> PathBuf {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/triton");
    let version = dir.join("repository").join(MODEL).join("1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(scripts.join("config.pbtxt"), version.parent().unwrap().join("config.pbtxt")).unwrap();
    std::fs::copy(scripts.join("model.py"), version.join("model.py")).unwrap();
    let weights = version.join("weights");
    let out = Command::new(assert_cmd::cargo::cargo_bin("approxifer"))
        .args(["export-weights", "--output", weights.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("repository")
}

/// A port nothing listens on now (Triton takes no port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `tritonserver` process on loopback, leading a process group of its own; the group is
/// killed (SIGKILL) when dropped: Triton's Python backend runs each model instance in a stub
/// process that outlived a killed server (two were left running after two suite runs).
struct Triton {
    child: Child,
    http: u16,
    grpc: u16,
    log: PathBuf,
}

impl Triton {
    /// Starts a server on `repository`; `slow`: the share of its executions made 10x slower.
    fn spawn(repository: &Path, log: PathBuf, slow: f64) -> Triton {
        let (http, grpc) = (free_port(), free_port());
        let child = Command::new(triton_dir().join("tritonserver"))
            .arg(format!("--model-repository={}", repository.display()))
            .args(["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--allow-metrics=false"])
            .arg(format!("--http-port={http}"))
            .arg(format!("--grpc-port={grpc}"))
            .env("APPROXIFER_SLOW_FRACTION", slow.to_string())
            .env("APPROXIFER_SLOW_FACTOR", "10")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .process_group(0)
            .spawn()
            .unwrap();
        Triton { child, http, grpc, log }
    }

    /// Waits until the server says its model is ready.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        let url = format!("http://127.0.0.1:{}/v2/models/{MODEL}/ready", self.http);
        loop {
            let status = ureq::get(&url).config().http_status_as_error(false).build().call().map(|r| r.status());
            if matches!(status, Ok(s) if s == 200) {
                return;
            }
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(self.child.try_wait().unwrap().is_none(), "tritonserver exited:\n{}", log());
            assert!(started.elapsed() < Duration::from_secs(90), "tritonserver not ready in 90 s:\n{}", log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// How `serve --worker` names it (gRPC).
    fn worker_url(&self) -> String {
        format!("grpc://127.0.0.1:{}/v2/models/{MODEL}", self.grpc)
    }

    /// Its own answers to `rows` queries, over REST.
    fn infer(&self, queries: &[f32]) -> Vec<f32> {
        let url = format!("http://127.0.0.1:{}/v2/models/{MODEL}/infer", self.http);
        infer(&url, queries).unwrap_or_else(|e| panic!("Triton answers: {e}"))
    }
}

impl Drop for Triton {
    fn drop(&mut self) {
        // The group's id is the server's pid (`process_group(0)`).
        let group = i32::try_from(self.child.id()).expect("a pid fits an i32");
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A v2 JSON inference of `queries` (images of 28 x 28) at `url`: the flat outputs.
fn infer(url: &str, queries: &[f32]) -> Result<Vec<f32>, String> {
    let rows = queries.len() / IMAGE;
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": queries}]});
    let mut response =
        ureq::post(url).config().http_status_as_error(false).build().send_json(&body).map_err(|e| e.to_string())?;
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("{}: {text}", response.status()));
    }
    let answer: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let data = answer["outputs"][0]["data"].as_array().ok_or("no output data")?;
    let values: Vec<f32> = data.iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32).collect();
    if values.len() != rows * CLASSES {
        return Err(format!("{} values for {rows} queries", values.len()));
    }
    Ok(values)
}

/// The embedded sample's images `range`, normalised as the model was trained.
fn images(range: std::ops::Range<usize>) -> Vec<f32> {
    let sample = approxifer::embedded::sample();
    let device = burn::tensor::Device::flex();
    let tensor = approxifer::train::image_tensor(&sample, range, approxifer::embedded::DATASET, &device);
    tensor.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

/// One sample of a Prometheus text exposition (0 when absent).
fn sample_of(metrics: &str, name_and_labels: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn serve_decodes_what_five_triton_servers_answer_and_loses_nothing_when_one_dies_and_one_straggles() {
    let (k, s) = (4, 1);
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    // Server 1 straggles: a quarter of its executions take 10x their time.
    let mut tritons: Vec<Triton> = (0..k + s)
        .map(|i| {
            Triton::spawn(&repository, dir.path().join(format!("triton-{i}.log")), if i == 1 { 0.25 } else { 0.0 })
        })
        .collect();
    tritons.iter_mut().for_each(Triton::wait_ready);

    let (k_arg, s_arg) = (k.to_string(), s.to_string());
    let mut args =
        vec!["serve", "--k", &k_arg, "--stragglers", &s_arg, "--listen", "127.0.0.1:0", "--model-name", MODEL];
    let urls: Vec<String> = tritons.iter().map(Triton::worker_url).collect();
    for url in &urls {
        args.extend(["--worker", url.as_str()]);
    }
    let server = Running::start(&args);
    let infer_url = format!("http://{}/v2/models/{MODEL}/infer", server.addr);

    // 1. One group of K queries at a time: the coordinator's answer is Berrut's decoding of
    //    the Tritons' own answers to the coded queries, from whichever N - S (or all N)
    //    answered first.
    let code =
        Code::new(CodeParams::builder(k, k + s).stragglers(s).nodes(NodeFamily::Authors).build().unwrap()).unwrap();
    let n = k + s;
    let mut subsets: Vec<Vec<bool>> = vec![vec![true; n]];
    subsets.extend((0..n).map(|missing| (0..n).map(|w| w != missing).collect()));
    let groups = 8;
    for group in 0..groups {
        let queries = images(group * k..(group + 1) * k);
        let answer = infer(&infer_url, &queries).expect("serve answers");
        let coded = cpu::encode_to_vec(&code, &queries, IMAGE).unwrap();
        let outputs = tritons[0].infer(&coded);
        let distance = |mask: &Vec<bool>| {
            let decoded = cpu::decode_to_vec(&code, &outputs, CLASSES, mask).unwrap();
            decoded.iter().zip(&answer).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
        };
        let nearest = subsets.iter().map(distance).fold(f32::INFINITY, f32::min);
        assert!(nearest < 1e-4, "group {group}: {nearest} from every decoding of the Tritons' answers");
    }

    // 2. Concurrent clients; server 3 is killed (SIGKILL) a third of the way through while
    //    server 1 keeps straggling: every query is answered, none lost.
    let (clients, requests, rows) = (4, 18, 8);
    let first = groups * k;
    let done = AtomicUsize::new(0);
    let right = AtomicUsize::new(0);
    let labels = approxifer::embedded::sample().labels;
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (infer_url, done, right, labels) = (&infer_url, &done, &right, &labels);
            scope.spawn(move || {
                for request in 0..requests {
                    let start = first + (client * requests + request) * rows;
                    let answer = infer(infer_url, &images(start..start + rows))
                        .unwrap_or_else(|e| panic!("client {client}, request {request}: {e}"));
                    let hits = answer
                        .chunks_exact(CLASSES)
                        .zip(&labels[start..start + rows])
                        .filter(|(row, label)| argmax(row) == **label as usize)
                        .count();
                    right.fetch_add(hits, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while done.load(Ordering::Relaxed) < clients * requests / 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = &mut tritons[3];
        killed.child.kill().unwrap();
        killed.child.wait().unwrap();
    });
    let loaded = clients * requests * rows;
    // Decoding 4 queries from 4 of 5 coded answers costs accuracy (the workers' own LeNet-5
    // scores about 0.9 here); rows garbled or out of order would score about 0.1.
    let accuracy = right.load(Ordering::Relaxed) as f64 / loaded as f64;
    assert!(accuracy > 0.4, "accuracy {accuracy}");

    // The books balance: every admitted query answered, none failed.
    let total = groups * k + loaded;
    let mut response = ureq::get(format!("http://{}/metrics", server.addr)).call().unwrap();
    let metrics = response.body_mut().read_to_string().unwrap();
    let answered = sample_of(&metrics, "approxifer_queries_total{outcome=\"exact\"}")
        + sample_of(&metrics, "approxifer_queries_total{outcome=\"approximate\"}");
    assert_eq!(answered, total as f64, "{metrics}");
    let outcomes = metrics.lines().filter(|l| l.starts_with("approxifer_queries_total{")).count();
    assert!(outcomes <= 2, "only exact and approximate outcomes: {metrics}");
    let exit = server.terminate();
    assert!(exit.success, "{}", exit.stderr);
    assert!(exit.stderr.contains(&format!("{total} queries answered, 0 errors")), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&format!("worker 3 ({}) is not answering", urls[3])),
        "the dead server is reported: {}",
        exit.stderr
    );
}
