//! Third-party v2 servers (Triton, MLServer, KServe) as the coordinator's workers: each runs the
//! embedded LeNet-5 with numpy (scripts/zoo_numpy.py) from the weights `approxifer
//! export-weights` writes, in a process group of its own, killed with it. The v2 JSON client
//! and the embedded images serve the tests of worker processes on other hosts too.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the servers call the model.
pub const MODEL: &str = "lenet5";
pub const IMAGE: usize = 28 * 28;
pub const CLASSES: usize = 10;

/// A port nothing listens on now (the servers take no port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The scripts folder's `files` and scripts/zoo_numpy.py copied into `folder`, and the
/// embedded model's weights exported to `weights` there.
pub fn model_folder(folder: &Path, files: &[&str]) {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    std::fs::create_dir_all(folder).unwrap();
    for file in files.iter().copied().chain(["zoo_numpy.py"]) {
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(scripts.join(file), folder.join(name)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let weights = folder.join("weights");
    let out = Command::new(assert_cmd::cargo::cargo_bin("approxifer"))
        .args(["export-weights", "--output", weights.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One server process on loopback, leading a process group of its own; the group is killed
/// (SIGKILL) when dropped: Triton's Python backend runs each model instance in a stub process
/// that outlived a killed server (two were left running after two suite runs).
pub struct Engine {
    pub child: Child,
    /// Its REST port.
    pub http: u16,
    pub grpc: u16,
    log: PathBuf,
    what: &'static str,
}

impl Engine {
    /// Starts `command` (its output to `log`), listening on `http` and `grpc`.
    pub fn spawn(what: &'static str, mut command: Command, (http, grpc): (u16, u16), log: PathBuf) -> Engine {
        let child = command
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Engine { child, http, grpc, log, what }
    }

    /// Waits until the server says its model is ready.
    pub fn wait_ready(&mut self) {
        let started = Instant::now();
        let url = format!("http://127.0.0.1:{}/v2/models/{MODEL}/ready", self.http);
        loop {
            let status = ureq::get(&url).config().http_status_as_error(false).build().call().map(|r| r.status());
            if matches!(status, Ok(s) if s == 200) {
                return;
            }
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(self.child.try_wait().unwrap().is_none(), "{} exited:\n{}", self.what, log());
            assert!(started.elapsed() < Duration::from_secs(120), "{} not ready in 120 s:\n{}", self.what, log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// How `serve --worker` names it over gRPC.
    pub fn grpc_url(&self) -> String {
        format!("grpc://127.0.0.1:{}/v2/models/{MODEL}", self.grpc)
    }

    /// How `serve --worker` names it over REST.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2/models/{MODEL}", self.http)
    }

    /// Its own answers to `queries` (images), over REST with JSON.
    pub fn infer(&self, queries: &[f32]) -> Vec<f32> {
        infer(&format!("{}/infer", self.rest_url()), queries).unwrap_or_else(|e| panic!("{} answers: {e}", self.what))
    }

    /// Kills the server alone (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The group's id is the server's pid (`process_group(0)`).
        let group = i32::try_from(self.child.id()).expect("a pid fits an i32");
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A v2 JSON inference of `queries` (images of 28 x 28) at `url`: the flat outputs.
pub fn infer(url: &str, queries: &[f32]) -> Result<Vec<f32>, String> {
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
pub fn images(range: std::ops::Range<usize>) -> Vec<f32> {
    let sample = approxifer::embedded::sample();
    let device = burn::tensor::Device::flex();
    let tensor = approxifer::train::image_tensor(&sample, range, approxifer::embedded::DATASET, &device);
    tensor.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

/// One sample of a Prometheus text exposition (0 when absent).
pub fn sample_of(metrics: &str, name_and_labels: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok()).unwrap_or(0.0)
}

/// `approxifer serve` (K = `k`, S = `n - k`) in front of `engines` by `urls`: each answer to
/// a group of K queries is Berrut's decoding of the engines' own answers to its coded queries
/// (to 1e-4, from whichever N - S or N answered first); then, under four concurrent clients,
/// engine `killed` is killed with SIGKILL a third of the way in: every query is answered, the
/// metrics and the exit line count them all, none failed, the dead engine is reported. The
/// service's stderr, for more checks.
pub fn serve_decodes_them_and_loses_nothing_when_one_dies(
    engines: &mut [Engine],
    urls: &[String],
    k: usize,
    killed: usize,
) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use approxifer::kernels::{Code, CodeParams, NodeFamily, cpu};

    let n = engines.len();
    let (k_arg, s_arg) = (k.to_string(), (n - k).to_string());
    let mut args =
        vec!["serve", "--k", &k_arg, "--stragglers", &s_arg, "--listen", "127.0.0.1:0", "--model-name", MODEL];
    for url in urls {
        args.extend(["--worker", url.as_str()]);
    }
    let server = super::process::Running::start(&args);
    let infer_url = format!("http://{}/v2/models/{MODEL}/infer", server.addr);

    // 1. One group of K queries at a time.
    let code =
        Code::new(CodeParams::builder(k, n).stragglers(n - k).nodes(NodeFamily::Authors).build().unwrap()).unwrap();
    let mut subsets: Vec<Vec<bool>> = vec![vec![true; n]];
    subsets.extend((0..n).map(|missing| (0..n).map(|w| w != missing).collect()));
    let groups = 8;
    for group in 0..groups {
        let queries = images(group * k..(group + 1) * k);
        let answer = infer(&infer_url, &queries).expect("serve answers");
        let coded = cpu::encode_to_vec(&code, &queries, IMAGE).unwrap();
        let outputs = engines[0].infer(&coded);
        let distance = |mask: &Vec<bool>| {
            let decoded = cpu::decode_to_vec(&code, &outputs, CLASSES, mask).unwrap();
            decoded.iter().zip(&answer).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
        };
        let nearest = subsets.iter().map(distance).fold(f32::INFINITY, f32::min);
        assert!(nearest < 1e-4, "group {group}: {nearest} from every decoding of the engines' answers");
    }

    // 2. Concurrent clients; one engine dies a third of the way through.
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
        engines[killed].kill();
    });
    let loaded = clients * requests * rows;
    // Decoding from N - S coded answers costs accuracy (the workers' own LeNet-5 scores about
    // 0.9 here); rows garbled or out of order would score about 0.1.
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
        exit.stderr.contains(&format!("worker {killed} ({}) is not answering", urls[killed])),
        "the dead server is reported: {}",
        exit.stderr
    );
    exit.stderr
}
