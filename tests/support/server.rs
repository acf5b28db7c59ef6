//! A v2 server on an ephemeral port in its own runtime, for the tests that talk to one over a
//! real socket: `serve`'s front end, and `approxifer worker`'s stand-in for remote workers.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use approxifer::serve::http::{HttpConfig, ModelSpec, serve_v2};
use approxifer::serve::{Baseline, BaselineConfig, LocalWorker, Policy, Scheme, ServedModel, Stats, Worker};
use burn::tensor::Device;

use super::{C, D};

/// The model's name on every test server.
pub const MODEL: &str = "smooth";

/// How long a test server's stop waits for open connections: longer than any test's deadline.
pub const DRAIN: Duration = Duration::from_secs(6);

/// Where a server listens: v2 REST, then v2 gRPC.
pub type Addrs = (SocketAddr, SocketAddr);

/// Any free ports.
pub fn any_ports() -> Addrs {
    ("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
}

pub struct Server {
    /// REST.
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<Stats>>>,
}

impl Server {
    /// `scheme` served on `listen` (REST and gRPC; port 0: any free one) as model [`MODEL`],
    /// taking queries of `D` values, at most `max_batch` per request.
    pub fn start_on(listen: Addrs, scheme: Box<dyn Scheme>, max_batch: usize, max_body_bytes: usize) -> Server {
        let config = HttpConfig {
            scheme: "test".into(),
            model: ModelSpec::new(MODEL, vec![D], C),
            max_batch,
            max_body_bytes,
            drain: DRAIN,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async move {
                let rest = tokio::net::TcpListener::bind(listen.0).await?;
                let grpc = tokio::net::TcpListener::bind(listen.1).await?;
                addr_tx.send((rest.local_addr()?, grpc.local_addr()?)).map_err(std::io::Error::other)?;
                serve_v2(rest, Some(grpc), scheme, config, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let (addr, grpc) = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server starts");
        Server { addr, grpc, stop: Some(stop), thread: Some(thread) }
    }

    /// What `approxifer worker` is: one replica of `model` behind an uncoded batcher, on
    /// `listen`.
    pub fn worker_on(listen: Addrs, model: ServedModel) -> Server {
        let workers: Vec<Arc<dyn Worker>> = vec![Arc::new(LocalWorker::start(0, model, Device::flex(), 1000))];
        let config = BaselineConfig {
            policy: Policy::Uncoded,
            input_len: D,
            output_len: C,
            max_batch: 256,
            max_queue_delay: Duration::ZERO,
            deadline: Duration::from_secs(30),
            capacity: 10_000,
            faults: None,
        };
        let scheme = Baseline::start(config, workers).expect("a worker's scheme starts");
        Server::start_on(listen, Box::new(scheme), 4096, 1 << 20)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stop(mut self) -> Stats {
        self.shutdown().expect("the server stops cleanly")
    }

    fn shutdown(&mut self) -> std::io::Result<Stats> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map_or(Ok(Stats::default()), |t| t.join().expect("the server thread does not panic"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
