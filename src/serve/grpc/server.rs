//! `inference.GRPCInferenceService` in front of a scheme: the same model, checks, admission,
//! metrics and shutdown as the REST routes ([`super::super::http`]), tensors in typed or raw
//! contents, answers in raw contents (as Triton answers), approximate rows in the output's
//! parameters; inferences one call each or many on one stream (Triton's `ModelStreamInfer`),
//! the model's configuration and statistics (Triton's `ModelConfig`, `ModelStatistics`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::http::StatusCode;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use super::proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use super::proto::{
    ModelConfigRequest, ModelConfigResponse, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ModelStatisticsRequest, ModelStatisticsResponse,
    ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse, model_infer_response,
    repository_index_response,
};
use super::{WINDOW, bool_parameter, classification, is_set, string_parameter, tensor_values, version};
use crate::serve::http::{App, Failure, Inference, check_tensors, hosted, infer_tensor, list};
use crate::serve::v2::{self, DataType};

/// Serves the gRPC service on `listener` until `shutdown` completes, then lets the calls in
/// progress finish.
pub(in crate::serve) async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let limit = app.config.max_body_bytes;
    let service = GrpcInferenceServiceServer::new(Service { app }).max_decoding_message_size(limit);
    tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(4 * WINDOW)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

/// A stream of answers, as the generated trait's defaults have it.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream's answers that may wait to be sent before its inferences wait for the client.
const STREAM_BUFFER: usize = 64;

#[derive(Clone)]
struct Service {
    app: Arc<App>,
}

/// A failure as a gRPC status.
fn status(failure: Failure) -> Status {
    let code = match failure.status {
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    };
    Status::new(code, failure.message)
}

impl Service {
    fn ready(&self) -> bool {
        !self.app.draining.load(Ordering::SeqCst)
    }

    /// The values of the request's one input (its name checked before), from raw or typed
    /// contents.
    fn input_values(request: &ModelInferRequest) -> Result<Vec<f32>, Failure> {
        let input = &request.inputs[0];
        let datatype = DataType::parse(&input.datatype).map_err(|e| Failure::bad_input(e.to_string()))?;
        if !request.raw_input_contents.is_empty() && request.raw_input_contents.len() != request.inputs.len() {
            return Err(Failure::bad_input(format!(
                "{} raw input contents for {} inputs",
                request.raw_input_contents.len(),
                request.inputs.len()
            )));
        }
        let raw = request.raw_input_contents.first().map(Vec::as_slice);
        tensor_values(datatype, raw, input.contents.as_ref()).map_err(Failure::bad_input)
    }

    /// [`infer`](Self::infer), counted in the metrics under `route`.
    async fn observed_infer(
        &self,
        request: ModelInferRequest,
        route: &'static str,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        match self.infer(request).await {
            Ok(response) => {
                self.app.observe(route, StatusCode::OK, None, Some(started));
                Ok(response)
            }
            Err(failure) => {
                self.app.observe(route, failure.status, Some(failure.code), Some(started));
                Err(status(failure))
            }
        }
    }

    async fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Failure> {
        let spec = hosted(&self.app, &request.model_name, version(&request.model_version))?;
        let inputs: Vec<&str> = request.inputs.iter().map(|t| t.name.as_str()).collect();
        let outputs: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
        let asked = request.inputs.iter().map(|t| (&t.name, &t.parameters));
        for (name, parameters) in asked.chain(request.outputs.iter().map(|o| (&o.name, &o.parameters))) {
            v2::refuse_unsupported(name, |key| parameters.get(key).is_some_and(is_set))
                .map_err(|e| Failure::bad_input(e.to_string()))?;
        }
        check_tensors(spec, &inputs, &outputs)?;
        // Triton's classification extension, checked before any work is done for it.
        let mut classes = None;
        for output in &request.outputs {
            classes = classes.or(classification(output.parameters.get(v2::CLASSIFICATION))?);
        }
        let values = Self::input_values(&request)?;
        let Inference { data, rows, approximate_rows } =
            infer_tensor(&self.app, spec, &request.inputs[0].shape, values).await?;
        let mut parameters = HashMap::from([("approximate".to_owned(), bool_parameter(!approximate_rows.is_empty()))]);
        if !approximate_rows.is_empty() {
            parameters.insert("approximate_rows".to_owned(), string_parameter(list(&approximate_rows)));
        }
        let c = spec.output_len;
        let (datatype, columns, raw) = match classes {
            None => ("FP32", c, DataType::Fp32.encode(&data)),
            Some(count) => ("BYTES", count.min(c), v2::encode_bytes(&v2::classify(&data, c, count))),
        };
        let output = model_infer_response::InferOutputTensor {
            name: spec.output_name.clone(),
            datatype: datatype.into(),
            shape: vec![rows as i64, columns as i64],
            parameters,
            contents: None,
        };
        Ok(ModelInferResponse {
            model_name: spec.name.clone(),
            model_version: spec.version.clone(),
            id: request.id,
            parameters: HashMap::new(),
            outputs: vec![output],
            raw_output_contents: vec![raw],
        })
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        self.app.observe("grpc ServerLive", StatusCode::OK, None, None);
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        self.app.observe("grpc ServerReady", StatusCode::OK, None, None);
        Ok(Response::new(ServerReadyResponse { ready: self.ready() }))
    }

    /// Not ready (rather than an error) for a model or version this server does not host.
    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let hosted = hosted(&self.app, &request.name, version(&request.version)).is_ok();
        self.app.observe("grpc ModelReady", StatusCode::OK, None, None);
        Ok(Response::new(ModelReadyResponse { ready: hosted && self.ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.app.observe("grpc ServerMetadata", StatusCode::OK, None, None);
        Ok(Response::new(ServerMetadataResponse {
            name: "approxifer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Its extensions that gRPC has (binary tensor data is REST's).
            extensions: vec![v2::CLASSIFICATION.into(), v2::MODEL_CONFIGURATION.into(), v2::STATISTICS.into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let spec = hosted(&self.app, &request.name, version(&request.version)).map_err(|failure| {
            self.app.observe("grpc ModelMetadata", failure.status, None, None);
            status(failure)
        })?;
        self.app.observe("grpc ModelMetadata", StatusCode::OK, None, None);
        Ok(Response::new(spec.metadata().into()))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.observed_infer(request.into_inner(), "grpc ModelInfer").await.map(Response::new)
    }

    /// Serves each request of the stream as it comes, concurrently (the scheme batches them as
    /// it batches separate calls), and answers each as it completes; a failed one is answered
    /// with its error message and its id, and the stream goes on. A request is read only once
    /// its answer has a slot ([`STREAM_BUFFER`] per stream): a client that sends without
    /// reading its answers is held back by flow control, not buffered without bound. A client
    /// that goes away drops the answers' receiver, and with it the inferences in progress
    /// (their queries are cancelled, as a closed call's are); one that closes its side gets
    /// every answer first.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<BoxStream<ModelStreamInferResponse>>, Status> {
        let mut requests = request.into_inner();
        let (answers, stream) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            while let Ok(slot) = answers.clone().reserve_owned().await
                && let Ok(Some(request)) = requests.message().await
            {
                let (service, gone) = (service.clone(), answers.clone());
                tokio::spawn(async move {
                    let failed = ModelInferResponse {
                        model_name: request.model_name.clone(),
                        model_version: request.model_version.clone(),
                        id: request.id.clone(),
                        ..ModelInferResponse::default()
                    };
                    let answer = tokio::select! {
                        answer = service.observed_infer(request, "grpc ModelStreamInfer") => answer,
                        () = gone.closed() => return,
                    };
                    let answer = match answer {
                        Ok(response) => {
                            ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
                        }
                        Err(status) => ModelStreamInferResponse {
                            error_message: status.message().to_owned(),
                            infer_response: Some(failed),
                        },
                    };
                    slot.send(Ok(answer));
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let spec = hosted(&self.app, &request.name, version(&request.version)).map_err(|failure| {
            self.app.observe("grpc ModelConfig", failure.status, None, None);
            status(failure)
        })?;
        self.app.observe("grpc ModelConfig", StatusCode::OK, None, None);
        Ok(Response::new(ModelConfigResponse { config: Some(spec.config(self.app.config.max_batch).into()) }))
    }

    /// Every model's (the one served) when no name is given.
    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        if !request.name.is_empty() {
            hosted(&self.app, &request.name, version(&request.version)).map_err(|failure| {
                self.app.observe("grpc ModelStatistics", failure.status, None, None);
                status(failure)
            })?;
        }
        self.app.observe("grpc ModelStatistics", StatusCode::OK, None, None);
        Ok(Response::new(ModelStatisticsResponse { model_stats: vec![self.app.statistics().into()] }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = self.app.index(request.into_inner().ready);
        self.app.observe("grpc RepositoryIndex", StatusCode::OK, None, None);
        let models = models
            .into_iter()
            .map(|m| repository_index_response::ModelIndex {
                name: m.name,
                version: m.version,
                state: m.state,
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }
}
