//! KServe's Python model server as the coordinator's workers: a third-party v2 server (from
//! PyPI, installed by scripts/kserve.sh) running the embedded LeNet-5 with numpy as a custom
//! model (scripts/kserve/server.py), behind `approxifer serve`, over gRPC (it answers in typed
//! contents) and over REST.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;

use engines::{Engine, MODEL};

/// The interpreter of the environment scripts/kserve.sh installed KServe into.
fn python() -> PathBuf {
    let python = std::env::var_os("APPROXIFER_KSERVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kserve/bin/python"));
    assert!(python.exists(), "{}: run scripts/kserve.sh (scripts/test.sh does)", python.display());
    python
}

/// A KServe server of the model in `folder`; `slow`: the share of its batches made 10x slower.
fn kserve(folder: &Path, log: PathBuf, slow: f64) -> Engine {
    let ports = (engines::free_port(), engines::free_port());
    let mut command = Command::new(python());
    command
        .arg(folder.join("server.py"))
        .args(["--model_name", MODEL, "--weights"])
        .arg(folder.join("weights"))
        .args(["--http_port", &ports.0.to_string(), "--grpc_port", &ports.1.to_string()])
        .env("APPROXIFER_SLOW_FRACTION", slow.to_string())
        .env("APPROXIFER_SLOW_FACTOR", "10");
    Engine::spawn("kserve", command, ports, log)
}

#[test]
fn serve_decodes_what_three_kserve_servers_answer_and_loses_nothing_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(MODEL);
    engines::model_folder(&folder, &["kserve/server.py"]);
    // Server 1 straggles: a quarter of its batches take 10x their time.
    let mut servers: Vec<Engine> = (0..3)
        .map(|i| kserve(&folder, dir.path().join(format!("kserve-{i}.log")), if i == 1 { 0.25 } else { 0.0 }))
        .collect();
    servers.iter_mut().for_each(Engine::wait_ready);
    let urls = [servers[0].grpc_url(), servers[1].rest_url(), servers[2].grpc_url()];
    let stderr = engines::serve_decodes_them_and_loses_nothing_when_one_dies(&mut servers, &urls, 2, 2);
    // KServe's REST front takes binary tensor data: the worker keeps it.
    assert!(!stderr.contains("refuses binary tensor data"), "{stderr}");
}
