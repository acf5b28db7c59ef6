//! The gRPC side of a remote worker: readiness, metadata and inference calls to any v2 server,
//! on one runtime shared by every remote worker (their threads block on it).

use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::Channel;

use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::proto::{ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, model_infer_request};
use super::{WINDOW, tensor_values};
use crate::serve::v2::{self, DataType};
use crate::serve::worker::Cancel;

/// The runtime gRPC calls run on: two threads are plenty, the calls mostly wait.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("approxifer-grpc")
            .enable_all()
            .build()
            .expect("starting the gRPC client runtime")
    })
}

/// Why a gRPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("bad address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("{}", status_text(.0))]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Protocol(#[from] v2::ProtocolError),
    #[error("{0}")]
    Answer(String),
    /// The caller cancelled the call (its answer was no longer needed); the stream was reset,
    /// so the server can drop the work too.
    #[error("cancelled")]
    Cancelled,
}

/// A status's code and message, and for a transport failure the cause at the bottom of its
/// chain (a killed server's call says `Unknown: transport error` alone, not that the
/// connection was refused or reset).
fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    let mut deepest = None;
    while let Some(error) = cause {
        deepest = Some(error);
        cause = error.source();
    }
    if let Some(error) = deepest {
        text = format!("{text} ({error})");
    }
    text
}

impl GrpcError {
    /// Whether the call ran out of time (a straggler's answer).
    pub fn is_timeout(&self) -> bool {
        matches!(self, GrpcError::Status(s) if s.code() == tonic::Code::DeadlineExceeded)
    }
}

/// A connection to one server's model, made lazily and remade after failures by the channel.
#[derive(Clone)]
pub struct Client {
    inner: GrpcInferenceServiceClient<Channel>,
    model: String,
    version: String,
    timeout: Duration,
}

impl Client {
    /// A client of `model` (at `version`, or the server's choice) at `url` (`http://host:port`);
    /// each call gives up after `timeout`.
    pub fn new(url: &str, model: &str, version: Option<&str>, timeout: Duration) -> Result<Self, GrpcError> {
        let _context = runtime().enter();
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(4 * WINDOW)
            .connect_lazy();
        let inner = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok(Client { inner, model: model.into(), version: version.unwrap_or_default().into(), timeout })
    }

    /// The model's metadata if it is ready.
    pub fn probe(&self) -> Result<v2::ModelMetadata, GrpcError> {
        let mut inner = self.inner.clone();
        let (name, version) = (self.model.clone(), self.version.clone());
        runtime().block_on(async move {
            let ready = inner.model_ready(ModelReadyRequest { name: name.clone(), version: version.clone() }).await?;
            if !ready.get_ref().ready {
                return Err(GrpcError::Answer(format!("model '{name}' is not ready")));
            }
            Ok(inner.model_metadata(ModelMetadataRequest { name, version }).await?.into_inner().into())
        })
    }

    /// Runs the model on `values` (a tensor `input` of `shape` and `datatype`, sent as raw
    /// contents) and returns output `output`'s values, raw or typed. Once `cancel` is set the
    /// call is given up ([`GrpcError::Cancelled`]) and its stream reset: a server that drops
    /// the work of a cancelled call (`approxifer worker`; Triton documents it for queued
    /// requests, not tried here) does not compute an answer nobody reads.
    pub fn infer(
        &self,
        id: String,
        (input, datatype, shape): (&str, DataType, Vec<i64>),
        values: &[f32],
        output: &str,
        cancel: &Cancel,
    ) -> Result<Vec<f32>, GrpcError> {
        let request = ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            id,
            inputs: vec![model_infer_request::InferInputTensor {
                name: input.into(),
                datatype: datatype.name().into(),
                shape,
                ..Default::default()
            }],
            outputs: vec![model_infer_request::InferRequestedOutputTensor {
                name: output.into(),
                ..Default::default()
            }],
            raw_input_contents: vec![datatype.encode(values)],
            ..Default::default()
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let mut inner = self.inner.clone();
        let cancel = cancel.clone();
        let response = runtime()
            .block_on(async move {
                // Dropping the call's future resets its stream.
                tokio::select! {
                    answer = inner.model_infer(request) => answer.map_err(GrpcError::from),
                    () = cancel.cancelled() => Err(GrpcError::Cancelled),
                }
            })?
            .into_inner();
        let Some(position) = response.outputs.iter().position(|t| t.name == output) else {
            return Err(GrpcError::Answer(format!("the answer has no output '{output}'")));
        };
        let tensor = &response.outputs[position];
        let datatype = DataType::parse(&tensor.datatype)?;
        // Servers answer raw (Triton, MLServer) or typed (KServe's Python server).
        let raw = match response.raw_output_contents.as_slice() {
            [] => None,
            raw => Some(raw.get(position).ok_or_else(|| {
                GrpcError::Answer(format!("{} raw outputs for {} outputs", raw.len(), response.outputs.len()))
            })?),
        };
        tensor_values(datatype, raw.map(Vec::as_slice), tensor.contents.as_ref()).map_err(GrpcError::Answer)
    }
}
