//! The coordinator's own cost over loopback gRPC: one batch of 32 groups (K = 4, S = 1: 128
//! queries of 28 x 28) from submission to every answer, against v2 gRPC servers that answer
//! at once (zeros, computed by nothing), so that what is timed is the coordinator: batching,
//! forming and encoding the coded queries, the gRPC calls and decoding. Uncoded on K of the
//! same servers, and the K + 1 gRPC calls alone (no coordinator), the transport's floor.
//! Target: ApproxIFER's median <= 1 ms per batch. Run: `cargo bench --bench coordinator`
//! (medians: target/criterion/coordinator*/*/new/estimates.json).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use approxifer::serve::grpc::client::Client;
use approxifer::serve::grpc::proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use approxifer::serve::grpc::proto::model_infer_response::InferOutputTensor;
use approxifer::serve::grpc::proto::model_metadata_response::TensorMetadata;
use approxifer::serve::grpc::proto::*;
use approxifer::serve::v2::DataType;
use approxifer::serve::{Cancel, Codec, Endpoint, RemoteConfig, RemoteWorker, SchemeConfig, SchemeKind, Worker};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tonic::{Request, Response, Status};

const K: usize = 4;
const GROUPS: usize = 32;
const SHAPE: [usize; 3] = [1, 28, 28];
const CLASSES: usize = 10;

/// A v2 model server whose every answer is ready before it is asked: zeros of the right size.
struct Instant;

fn tensor(name: &str, dims: &[usize]) -> TensorMetadata {
    let shape = std::iter::once(-1).chain(dims.iter().map(|&d| d as i64)).collect();
    TensorMetadata { name: name.into(), datatype: "FP32".into(), shape }
}

#[tonic::async_trait]
impl GrpcInferenceService for Instant {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }
    async fn model_ready(&self, _: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse { name: "instant".into(), ..Default::default() }))
    }
    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        Ok(Response::new(ModelMetadataResponse {
            name: request.into_inner().name,
            versions: vec!["1".into()],
            platform: "instant".into(),
            inputs: vec![tensor("input", &SHAPE)],
            outputs: vec![tensor("output", &[CLASSES])],
        }))
    }
    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let request = request.into_inner();
        let rows = request.inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(0) as usize;
        Ok(Response::new(ModelInferResponse {
            model_name: request.model_name,
            id: request.id,
            outputs: vec![InferOutputTensor {
                name: "output".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, CLASSES as i64],
                ..Default::default()
            }],
            raw_output_contents: vec![vec![0; rows * CLASSES * 4]],
            ..Default::default()
        }))
    }
}

/// `count` instant servers on loopback, on a runtime of their own (one thread, so that they
/// take as little as possible from the coordinator's cores).
fn instant_servers(count: usize) -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for _ in 0..count {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let service = GrpcInferenceServiceServer::new(Instant).max_decoding_message_size(64 << 20);
                // Windows that take a batch without flow-control round trips, as `serve`'s.
                let server = tonic::transport::Server::builder()
                    .initial_stream_window_size(8 << 20)
                    .initial_connection_window_size(32 << 20)
                    .add_service(service);
                tokio::spawn(server.serve_with_incoming(incoming));
            }
            std::future::pending::<()>().await;
        });
    });
    (0..count).map(|_| rx.recv().unwrap()).collect()
}

fn settings() -> SchemeConfig {
    SchemeConfig {
        k: K,
        stragglers: 1,
        byzantine: 0,
        locator: Default::default(),
        partial_calibrations: Vec::new(),
        learning: None,
        privacy: Default::default(),
        copies: 2,
        hedge_after: Duration::from_secs(10),
        coded_hedge_after: None,
        input_len: SHAPE.iter().product(),
        output_len: CLASSES,
        max_batch: GROUPS,
        // A batch goes when it is full: all 32 groups are submitted at once.
        max_queue_delay: Duration::from_millis(50),
        coded_queue_delay: None,
        decode_grace: approxifer::serve::DEFAULT_DECODE_GRACE,
        deadline: Duration::from_secs(5),
        capacity: 4 * GROUPS * K,
        faults: None,
        codec: Codec::Cpu,
        trace_slower_than: None,
    }
}

fn coordinator_over_grpc(c: &mut Criterion) {
    let servers = instant_servers(K + 1);
    let queries: Vec<Vec<f32>> =
        (0..GROUPS * K).map(|q| (0..784).map(|i| ((q * 784 + i) % 255) as f32 / 255.0).collect()).collect();
    let mut group = c.benchmark_group("coordinator over loopback gRPC, one batch of 32 groups (K = 4)");
    group.throughput(Throughput::Elements((GROUPS * K) as u64));
    for kind in [SchemeKind::Approxifer, SchemeKind::Uncoded] {
        let settings = settings();
        let workers: Vec<Arc<dyn Worker>> = servers[..kind.workers(&settings)]
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let config = RemoteConfig {
                    endpoint: Endpoint::parse(&format!("grpc://{addr}"), "instant").unwrap(),
                    input_shape: SHAPE.to_vec(),
                    output_len: CLASSES,
                    timeout: settings.deadline,
                    concurrency: 2,
                    capacity: settings.capacity,
                };
                Arc::new(RemoteWorker::connect(i, config)) as Arc<dyn Worker>
            })
            .collect();
        let scheme = kind.start(&settings, workers).unwrap();
        group.bench_function(kind.name(), |b| {
            b.iter(|| {
                let tickets = scheme.submit_all(queries.clone()).unwrap();
                for ticket in tickets {
                    ticket.recv().unwrap().unwrap();
                }
            })
        });
        let stats = scheme.shutdown();
        assert_eq!(stats.failed_groups, 0, "{stats:?}");
    }
    // The floor: the K + 1 calls of 32 rows each alone, in parallel from threads of their
    // own, with no coordinator around them.
    let clients: Vec<Client> = servers
        .iter()
        .map(|addr| Client::new(&format!("http://{addr}"), "instant", None, Duration::from_secs(5)).unwrap())
        .collect();
    let rows = vec![0.5f32; GROUPS * 784];
    group.bench_function("the gRPC calls alone", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for client in &clients {
                    let rows = &rows;
                    scope.spawn(move || {
                        let shape = vec![GROUPS as i64, 1, 28, 28];
                        client
                            .infer("0".into(), ("input", DataType::Fp32, shape), rows, "output", &Cancel::default())
                            .unwrap()
                    });
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, coordinator_over_grpc);
criterion_main!(benches);
