//! NVIDIA Triton Inference Server as the coordinator's workers: a third-party v2 server (from
//! the PyPI package nvidia-pytriton, installed by scripts/triton.sh) running the embedded
//! LeNet-5 with numpy in its Python backend (scripts/triton/), behind `approxifer serve`.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;

use engines::{Engine, MODEL};

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
    let model = dir.join("repository").join(MODEL);
    engines::model_folder(&model.join("1"), &["triton/model.py"]);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/triton/config.pbtxt"),
        model.join("config.pbtxt"),
    )
    .unwrap();
    dir.join("repository")
}

/// A `tritonserver` on `repository`; `slow`: the share of its executions made 10x slower.
fn triton(repository: &Path, log: PathBuf, slow: f64) -> Engine {
    let ports = (engines::free_port(), engines::free_port());
    let mut command = Command::new(triton_dir().join("tritonserver"));
    command
        .arg(format!("--model-repository={}", repository.display()))
        .args(["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--allow-metrics=false"])
        .arg(format!("--http-port={}", ports.0))
        .arg(format!("--grpc-port={}", ports.1))
        .env("APPROXIFER_SLOW_FRACTION", slow.to_string())
        .env("APPROXIFER_SLOW_FACTOR", "10");
    Engine::spawn("tritonserver", command, ports, log)
}

#[test]
fn serve_decodes_what_five_triton_servers_answer_and_loses_nothing_when_one_dies_and_one_straggles() {
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    // Server 1 straggles: a quarter of its executions take 10x their time.
    let mut tritons: Vec<Engine> = (0..5)
        .map(|i| triton(&repository, dir.path().join(format!("triton-{i}.log")), if i == 1 { 0.25 } else { 0.0 }))
        .collect();
    tritons.iter_mut().for_each(Engine::wait_ready);
    let urls: Vec<String> = tritons.iter().map(Engine::grpc_url).collect();
    engines::serve_decodes_them_and_loses_nothing_when_one_dies(&mut tritons, &urls, 4, 3);
}
