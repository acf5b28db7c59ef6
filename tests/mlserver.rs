//! Seldon's MLServer as the coordinator's workers: a third-party v2 server (from PyPI,
//! installed by scripts/mlserver.sh) running the embedded LeNet-5 with numpy in a custom
//! runtime (scripts/mlserver/), behind `approxifer serve`, over gRPC and over REST, where it
//! takes JSON only: the worker finds that out by itself.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;

use engines::{Engine, MODEL};

/// The interpreter of the environment scripts/mlserver.sh installed MLServer into.
fn python() -> PathBuf {
    let python = std::env::var_os("APPROXIFER_MLSERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mlserver/bin/python"));
    assert!(python.exists(), "{}: run scripts/mlserver.sh (scripts/test.sh does)", python.display());
    python
}

/// An MLServer serving the models under `repository`; `slow`: the share of its batches made
/// 10x slower.
fn mlserver(repository: &Path, log: PathBuf, slow: f64) -> Engine {
    let ports = (engines::free_port(), engines::free_port());
    let mut command = Command::new(python());
    command
        .args(["-c", "import sys; from mlserver.cli import main; sys.exit(main())", "start"])
        .arg(repository)
        .env("MLSERVER_HOST", "127.0.0.1")
        .env("MLSERVER_HTTP_PORT", ports.0.to_string())
        .env("MLSERVER_GRPC_PORT", ports.1.to_string())
        // No metrics server (it would take a third port), no worker processes (they fail
        // with the newest uvloop; SERVING.md).
        .env("MLSERVER_METRICS_ENDPOINT", "")
        .env("MLSERVER_PARALLEL_WORKERS", "0")
        .env("APPROXIFER_SLOW_FRACTION", slow.to_string())
        .env("APPROXIFER_SLOW_FACTOR", "10");
    Engine::spawn("mlserver", command, ports, log)
}

#[test]
fn serve_decodes_what_three_mlservers_answer_over_grpc_and_json_and_loses_nothing_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("repository");
    engines::model_folder(&repository.join(MODEL), &["mlserver/runtime.py", "mlserver/model-settings.json"]);
    // Server 1 straggles: a quarter of its batches take 10x their time.
    let mut servers: Vec<Engine> = (0..3)
        .map(|i| mlserver(&repository, dir.path().join(format!("mlserver-{i}.log")), if i == 1 { 0.25 } else { 0.0 }))
        .collect();
    servers.iter_mut().for_each(Engine::wait_ready);
    // Server 1 over REST, named as a user would: the worker tries binary tensors first.
    let urls = [servers[0].grpc_url(), servers[1].rest_url(), servers[2].grpc_url()];
    let stderr = engines::serve_decodes_them_and_loses_nothing_when_one_dies(&mut servers, &urls, 2, 2);
    assert!(
        stderr.contains(&format!("worker 1 ({}) refuses binary tensor data and takes JSON", urls[1])),
        "the REST worker moved to JSON: {stderr}"
    );
    // ... at its first request, which JSON answered: no outage.
    assert!(!stderr.contains(&format!("worker 1 ({}) is not answering", urls[1])), "{stderr}");
}
