//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`): the messages,
//! client and server stubs generated from `inference.proto` by the build script; `serve`'s and
//! `worker`'s service ([`server`]); the client remote workers use ([`client`]).

pub mod client;
pub mod server;

/// The generated messages and stubs.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("inference");
}

use proto::model_metadata_response::TensorMetadata;
use proto::{InferParameter, InferTensorContents, ModelMetadataResponse};

use super::v2::{self, DataType};

/// HTTP/2 flow-control window per stream (a connection's is four times it), client and server:
/// a batch is tens to hundreds of kilobytes, and the default 64 KiB windows would stall each
/// one on flow-control round trips.
const WINDOW: u32 = 8 << 20;
use proto::infer_parameter::ParameterChoice;

/// A boolean parameter.
fn bool_parameter(value: bool) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(value)) }
}

/// A string parameter.
fn string_parameter(value: String) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(value)) }
}

/// Whether a parameter is set as the REST form's [`v2::flag`](crate::serve::v2::flag) reads
/// it: true, a non-zero number or any string.
fn is_set(parameter: &InferParameter) -> bool {
    match &parameter.parameter_choice {
        Some(ParameterChoice::BoolParam(value)) => *value,
        Some(ParameterChoice::Int64Param(value)) => *value != 0,
        Some(ParameterChoice::Uint64Param(value)) => *value != 0,
        Some(ParameterChoice::DoubleParam(value)) => *value != 0.0,
        Some(ParameterChoice::StringParam(_)) => true,
        None => false,
    }
}

/// The number of top classes a `classification` parameter asks for (Triton sends an int64),
/// if any: a positive integer.
fn classification(parameter: Option<&InferParameter>) -> Result<Option<usize>, crate::serve::http::Failure> {
    let count = match parameter.and_then(|p| p.parameter_choice.as_ref()) {
        None => return Ok(None),
        Some(ParameterChoice::Int64Param(count)) => u64::try_from(*count).ok(),
        Some(ParameterChoice::Uint64Param(count)) => Some(*count),
        Some(_) => None,
    };
    match count {
        Some(0) => Ok(None),
        Some(count) => Ok(usize::try_from(count).ok()),
        None => Err(crate::serve::http::Failure::bad_input(
            crate::serve::v2::ProtocolError::Classification(format!("{parameter:?}")).to_string(),
        )),
    }
}

/// `version` as the protocol sends it: empty for the server's choice.
fn version(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

/// A tensor's values as `f32`s: from its raw contents when there are any (little-endian bytes of
/// `datatype`), else from the typed field of its type. FP16 has no typed field.
fn tensor_values(
    datatype: DataType,
    raw: Option<&[u8]>,
    typed: Option<&InferTensorContents>,
) -> Result<Vec<f32>, String> {
    if let Some(raw) = raw {
        return datatype.decode(raw).map_err(|e| e.to_string());
    }
    match datatype {
        DataType::Fp32 => Ok(typed.map(|c| c.fp32_contents.clone()).unwrap_or_default()),
        DataType::Fp64 => Ok(typed.map(|c| c.fp64_contents.iter().map(|&v| v as f32).collect()).unwrap_or_default()),
        DataType::Fp16 => Err("FP16 tensors travel as raw contents only".into()),
    }
}

impl From<v2::ModelMetadata> for ModelMetadataResponse {
    fn from(metadata: v2::ModelMetadata) -> Self {
        let tensors = |tensors: Vec<v2::TensorMetadata>| {
            tensors.into_iter().map(|t| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape }).collect()
        };
        ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions.unwrap_or_default(),
            platform: metadata.platform.unwrap_or_default(),
            inputs: tensors(metadata.inputs),
            outputs: tensors(metadata.outputs),
        }
    }
}

impl From<ModelMetadataResponse> for v2::ModelMetadata {
    fn from(metadata: ModelMetadataResponse) -> Self {
        let tensors = |tensors: Vec<TensorMetadata>| {
            tensors
                .into_iter()
                .map(|t| v2::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape })
                .collect()
        };
        v2::ModelMetadata {
            name: metadata.name,
            versions: Some(metadata.versions),
            platform: Some(metadata.platform),
            inputs: tensors(metadata.inputs),
            outputs: tensors(metadata.outputs),
        }
    }
}

impl From<v2::ModelConfig> for proto::ModelConfig {
    /// A type or format name Triton does not have becomes its invalid (zero) value.
    fn from(config: v2::ModelConfig) -> Self {
        let data_type = |name: &str| proto::DataType::from_str_name(name).unwrap_or_default() as i32;
        let format = |name: &str| proto::model_input::Format::from_str_name(name).unwrap_or_default() as i32;
        proto::ModelConfig {
            input: config
                .input
                .into_iter()
                .map(|t| proto::ModelInput {
                    data_type: data_type(&t.data_type),
                    format: format(&t.format),
                    name: t.name,
                    dims: t.dims,
                })
                .collect(),
            output: config
                .output
                .into_iter()
                .map(|t| proto::ModelOutput {
                    data_type: data_type(&t.data_type),
                    name: t.name,
                    dims: t.dims,
                    label_filename: t.label_filename,
                })
                .collect(),
            name: config.name,
            platform: config.platform,
            backend: config.backend,
            max_batch_size: config.max_batch_size,
        }
    }
}

impl From<v2::StatisticDuration> for proto::StatisticDuration {
    fn from(duration: v2::StatisticDuration) -> Self {
        proto::StatisticDuration { count: duration.count, ns: duration.ns }
    }
}

impl From<v2::ModelStatistics> for proto::ModelStatistics {
    fn from(statistics: v2::ModelStatistics) -> Self {
        let stats = statistics.inference_stats;
        proto::ModelStatistics {
            name: statistics.name,
            version: statistics.version,
            last_inference: statistics.last_inference,
            inference_count: statistics.inference_count,
            execution_count: statistics.execution_count,
            inference_stats: Some(proto::InferStatistics {
                success: Some(stats.success.into()),
                fail: Some(stats.fail.into()),
                queue: Some(stats.queue.into()),
                compute_input: Some(stats.compute_input.into()),
                compute_infer: Some(stats.compute_infer.into()),
                compute_output: Some(stats.compute_output.into()),
                cache_hit: Some(stats.cache_hit.into()),
                cache_miss: Some(stats.cache_miss.into()),
            }),
        }
    }
}
