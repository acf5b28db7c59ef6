//! The Open Inference Protocol (KServe v2) over REST, the parts `serve`, `worker` and remote
//! workers speak: JSON tensors (flat or nested `data`, FP32, FP16 or FP64), the binary tensor
//! data extension (a JSON header of `Inference-Header-Content-Length` bytes, then each binary
//! tensor's little-endian bytes in order), model metadata, and the `null`s some servers send
//! where a field has no value. Shared by the server ([`super::http`]) and the client
//! ([`super::remote`]), so both read and write one format.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that gives the JSON part's length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A tensor parameter: its value is a byte count when the tensor travels as binary data.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";

/// Parameters of requests, responses and tensors: a JSON object (servers may send `null`).
pub type Parameters = Option<Map<String, Value>>;

/// The element types this project reads and writes; answers are always FP32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Fp16,
    Fp32,
    Fp64,
}

impl DataType {
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        match name {
            "FP16" => Ok(DataType::Fp16),
            "FP32" => Ok(DataType::Fp32),
            "FP64" => Ok(DataType::Fp64),
            other => Err(ProtocolError::DataType(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            DataType::Fp16 => 2,
            DataType::Fp32 => 4,
            DataType::Fp64 => 8,
        }
    }

    /// Little-endian `bytes` of this type as `f32`s.
    pub fn decode(self, bytes: &[u8]) -> Result<Vec<f32>, ProtocolError> {
        if bytes.len() % self.width() != 0 {
            return Err(ProtocolError::BinarySize { bytes: bytes.len(), datatype: self.name() });
        }
        Ok(match self {
            DataType::Fp16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DataType::Fp32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DataType::Fp64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of eight")) as f32)
                .collect(),
        })
    }

    /// `values` as little-endian bytes of this type.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DataType::Fp16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            DataType::Fp32 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            DataType::Fp64 => values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect(),
        }
    }
}

/// Why a request or a response does not follow the protocol.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a valid inference body: {0}")]
    Json(String),
    #[error("the {HEADER_LENGTH} header says {header} bytes of JSON, and the body has {body}")]
    HeaderLength { header: String, body: usize },
    #[error("binary tensor data of {bytes} bytes is not a whole number of {datatype} values")]
    BinarySize { bytes: usize, datatype: &'static str },
    #[error("the binary tensors take {expected} bytes after the JSON header, and {actual} are there")]
    BinaryLength { expected: usize, actual: usize },
    #[error("datatype {0} is not supported: FP32, FP16 or FP64")]
    DataType(String),
    #[error("tensor '{name}' has no data")]
    NoData { name: String },
    #[error("tensor '{name}' of shape {shape:?} holds {values} values")]
    ShapeMismatch { name: String, shape: Vec<i64>, values: usize },
    #[error("'classification' asks for a number of top classes, a positive integer; got {0}")]
    Classification(String),
    #[error("tensor '{name}' asks for {what} with parameter '{parameter}', which this server does not implement")]
    Unsupported { name: String, parameter: &'static str, what: &'static str },
}

/// The output parameter of Triton's classification extension: the number of top classes to
/// answer, as strings ([`classify`]), in place of the scores.
pub const CLASSIFICATION: &str = "classification";

/// Tensor parameters of protocol extensions this server does not implement, and what they ask
/// for: shared memory (a tensor's values in a region the client registered). Answered as if
/// not asked, a client would read something other than it asked for (nothing where it
/// looks), so a request that sets one is refused.
pub const UNSUPPORTED_PARAMETERS: [(&str, &str); 2] = [
    ("shared_memory_region", "shared memory (the shared-memory extension)"),
    ("shared_memory_byte_size", "shared memory (the shared-memory extension)"),
];

/// Refuses tensor `name` if `is_set` says it sets one of the [`UNSUPPORTED_PARAMETERS`].
pub fn refuse_unsupported(name: &str, is_set: impl Fn(&str) -> bool) -> Result<(), ProtocolError> {
    match UNSUPPORTED_PARAMETERS.iter().find(|(parameter, _)| is_set(parameter)) {
        Some(&(parameter, what)) => Err(ProtocolError::Unsupported { name: name.into(), parameter, what }),
        None => Ok(()),
    }
}

/// An inference request.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// An input or output tensor: its values in `data` (JSON) or, with `binary_data_size` among its
/// parameters, in the binary part of the body.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Parameters,
    #[serde(default, deserialize_with = "flat_data", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

/// An output a request asks for, and how (`binary_data: true` among its parameters).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Parameters,
}

/// An inference response; its outputs numeric [`Tensor`]s, or strings ([`BytesTensor`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InferResponse<T = Tensor> {
    #[serde(default)]
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Parameters,
    pub outputs: Vec<T>,
}

/// An output tensor of strings (`BYTES`): its elements in `data` (JSON) or, with
/// `binary_data_size` among its parameters, in the binary part of the body ([`encode_bytes`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BytesTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Parameters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<String>>,
}

/// The number of top classes an output asks for with Triton's classification extension
/// (`classification` among its parameters), if it asks: a positive integer.
pub fn classification(parameters: &Parameters) -> Result<Option<usize>, ProtocolError> {
    let Some(value) = parameters.as_ref().and_then(|p| p.get(CLASSIFICATION)) else { return Ok(None) };
    match value.as_u64() {
        Some(0) => Ok(None),
        Some(count) => Ok(usize::try_from(count).ok()),
        None => Err(ProtocolError::Classification(value.to_string())),
    }
}

/// Per row of `scores` (`cols` each), its `count` largest (at most `cols`; ties to the lower
/// index) as Triton's classification extension writes them, `"value:index"`, largest first.
pub fn classify(scores: &[f32], cols: usize, count: usize) -> Vec<String> {
    let count = count.min(cols);
    scores
        .chunks_exact(cols.max(1))
        .flat_map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.into_iter().take(count).map(move |i| format!("{:.6}:{i}", row[i]))
        })
        .collect()
}

/// `BYTES` elements as the binary extension and gRPC's raw contents carry them: each a
/// 4-byte little-endian length, then its bytes.
pub fn encode_bytes(elements: &[String]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(elements.iter().map(|e| 4 + e.len()).sum());
    for element in elements {
        bytes.extend_from_slice(&(element.len() as u32).to_le_bytes());
        bytes.extend_from_slice(element.as_bytes());
    }
    bytes
}

/// A model's metadata (`GET /v2/models/{name}`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<String>,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor's name, type and shape; `-1` marks a dimension of any size (the batch).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Triton's model configuration extension: `GET /v2/models/{name}/config`, gRPC `ModelConfig`.
pub const MODEL_CONFIGURATION: &str = "model_configuration";

/// A model's configuration as Triton's model configuration extension answers it, in the field
/// names of its `ModelConfig`: the fields its clients read to form requests (the most queries
/// in one, each tensor's type and dimensions).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    /// The most queries one request may hold; tensors' `dims` leave that dimension out.
    pub max_batch_size: i32,
    pub input: Vec<ConfigInput>,
    pub output: Vec<ConfigOutput>,
}

/// An input of a [`ModelConfig`]: Triton's type name (`TYPE_FP32`), its image layout
/// (`FORMAT_NONE`: not an image the server reorders) and its dimensions without the batch.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ConfigInput {
    pub name: String,
    pub data_type: String,
    pub format: String,
    pub dims: Vec<i64>,
}

/// An output of a [`ModelConfig`]; `label_filename` is empty: no class labels are served.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ConfigOutput {
    pub name: String,
    pub data_type: String,
    pub dims: Vec<i64>,
    pub label_filename: String,
}

/// Triton's statistics extension: `GET /v2/models[/{name}[/versions/{v}]]/stats`, gRPC
/// `ModelStatistics`.
pub const STATISTICS: &str = "statistics";

/// What the statistics extension answers: one entry per model asked for.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatisticsResponse {
    pub model_stats: Vec<ModelStatistics>,
}

/// A model's counts since the server started, in the field names of Triton's
/// `ModelStatistics`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    /// When the last inference request ended, in milliseconds since the Unix epoch (0: none).
    pub last_inference: u64,
    /// Queries answered (each row of a request counts).
    pub inference_count: u64,
    /// Batches the scheme dispatched (one dispatch serves many requests' queries).
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    /// Per batch size: not kept (empty).
    pub batch_stats: Vec<serde_json::Value>,
}

/// Counts and cumulative durations of an inference's phases, Triton's meanings.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct InferStatistics {
    /// Requests answered, and their time from arrival to answer.
    pub success: StatisticDuration,
    /// Requests failed, and their time.
    pub fail: StatisticDuration,
    /// Queries dispatched, and their wait in the batcher.
    pub queue: StatisticDuration,
    /// Nothing: the coded queries are formed inside the workers' requests (`compute_infer`).
    pub compute_input: StatisticDuration,
    /// The workers' requests, and their time: forming their input, the model, reading back.
    pub compute_infer: StatisticDuration,
    /// The batches, and the time spent locating liars and decoding their answers.
    pub compute_output: StatisticDuration,
    /// No response cache: zero.
    pub cache_hit: StatisticDuration,
    pub cache_miss: StatisticDuration,
}

/// A count and a cumulative duration in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatisticDuration {
    pub count: u64,
    pub ns: u64,
}

/// A model of a server's repository index (Triton's model repository extension: `POST
/// /v2/repository/index`, gRPC `RepositoryIndex`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ModelIndex {
    pub name: String,
    pub version: String,
    /// `READY`, or `UNAVAILABLE` with a reason.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// What a repository index request may ask.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct IndexRequest {
    #[serde(default)]
    pub repository_name: String,
    /// Only the models ready for inference.
    #[serde(default)]
    pub ready: bool,
}

/// An error body.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A parameter's value as a flag (`true`, or a nonzero number).
pub fn flag(parameters: &Parameters, key: &str) -> bool {
    parameters.as_ref().and_then(|p| p.get(key)).is_some_and(|v| v.as_bool().unwrap_or(v.as_f64() != Some(0.0)))
}

/// A parameter's value as a byte count.
fn binary_size(parameters: &Parameters) -> Option<usize> {
    parameters.as_ref()?.get(BINARY_DATA_SIZE)?.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// A body: its JSON part parsed, and the binary bytes after it (empty without the extension).
pub fn split_body<'a, T: serde::de::DeserializeOwned>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(T, &'a [u8]), ProtocolError> {
    let json_len = match header_length {
        None => body.len(),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n <= body.len() => n,
            _ => return Err(ProtocolError::HeaderLength { header: text.to_owned(), body: body.len() }),
        },
    };
    let parsed = serde_json::from_slice(&body[..json_len]).map_err(|e| ProtocolError::Json(e.to_string()))?;
    Ok((parsed, &body[json_len..]))
}

/// The values of every tensor in order, each from its `data` or from its slice of `binary`
/// (taken in tensor order), checked against its shape.
pub fn tensor_values(tensors: &[Tensor], binary: &[u8]) -> Result<Vec<Vec<f32>>, ProtocolError> {
    let expected: usize = tensors.iter().filter_map(|t| binary_size(&t.parameters)).sum();
    if expected != binary.len() {
        return Err(ProtocolError::BinaryLength { expected, actual: binary.len() });
    }
    let mut offset = 0;
    tensors
        .iter()
        .map(|tensor| {
            let datatype = DataType::parse(&tensor.datatype)?;
            let values = match (binary_size(&tensor.parameters), &tensor.data) {
                (Some(size), _) => {
                    let values = datatype.decode(&binary[offset..offset + size])?;
                    offset += size;
                    values
                }
                (None, Some(data)) => data.clone(),
                (None, None) => return Err(ProtocolError::NoData { name: tensor.name.clone() }),
            };
            let count = tensor.shape.iter().try_fold(1i64, |n, &s| if s < 0 { None } else { n.checked_mul(s) });
            if count != i64::try_from(values.len()).ok() {
                return Err(ProtocolError::ShapeMismatch {
                    name: tensor.name.clone(),
                    shape: tensor.shape.clone(),
                    values: values.len(),
                });
            }
            Ok(values)
        })
        .collect()
}

/// A body of `json` followed by `binary` (the extension's layout), and the value of the
/// `Inference-Header-Content-Length` header to send with it (`None`: plain JSON).
pub fn join_body<T: Serialize>(json: &T, binary: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut body = serde_json::to_vec(json).expect("protocol types serialize");
    if binary.is_empty() {
        return (body, None);
    }
    let header = body.len();
    body.extend_from_slice(binary);
    (body, Some(header))
}

/// `data` as one flat list of numbers, however deeply nested (the protocol allows both).
/// A `null` element reads as NaN: an answer that says nothing, which callers mask out.
fn flat_data<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<f32>>, D::Error> {
    struct Nullable;
    impl<'de> Visitor<'de> for Nullable {
        type Value = Option<Vec<f32>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of numbers, possibly nested, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let mut values = Vec::new();
            d.deserialize_any(Flatten(&mut values))?;
            Ok(Some(values))
        }
    }
    deserializer.deserialize_option(Nullable)
}

/// Appends every number of a (nested) list to its vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of numbers")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(f32::NAN);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_answers_each_rows_top_classes_largest_first_as_triton_writes_them() {
        let scores = [0.1, 0.7, 0.2, 0.5, 0.5, -1.0];
        assert_eq!(classify(&scores, 3, 2), ["0.700000:1", "0.200000:2", "0.500000:0", "0.500000:1"]);
        // More classes than the model has: all of them.
        assert_eq!(classify(&scores[..3], 3, 5), ["0.700000:1", "0.200000:2", "0.100000:0"]);
        let asked = |value: serde_json::Value| classification(&Some(Map::from_iter([(CLASSIFICATION.into(), value)])));
        assert_eq!(asked(3.into()).unwrap(), Some(3));
        assert_eq!(asked(0.into()).unwrap(), None);
        assert_eq!(classification(&None).unwrap(), None);
        assert!(matches!(asked("three".into()), Err(ProtocolError::Classification(_))));
        assert!(matches!(asked((-2).into()), Err(ProtocolError::Classification(_))));
        assert_eq!(encode_bytes(&["ab".into(), String::new()]), [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    }

    #[test]
    fn data_reads_flat_nested_and_null() {
        let tensor: Tensor =
            serde_json::from_str(r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[null,-4]]}"#).unwrap();
        let data = tensor.data.unwrap();
        assert_eq!((data[0], data[1], data[3]), (1.0, 2.5, -4.0));
        assert!(data[2].is_nan());
        let none: Tensor = serde_json::from_str(r#"{"name":"x","shape":[0],"datatype":"FP32","data":null}"#).unwrap();
        assert!(none.data.is_none());
        assert!(serde_json::from_str::<Tensor>(r#"{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}"#).is_err());
    }

    #[test]
    fn binary_tensors_follow_the_header_in_order_and_every_size_is_checked() {
        let first = Tensor {
            name: "a".into(),
            shape: vec![2],
            datatype: "FP16".into(),
            parameters: Some(Map::from_iter([(BINARY_DATA_SIZE.into(), 4.into())])),
            data: None,
        };
        let second = Tensor {
            name: "b".into(),
            shape: vec![1],
            datatype: "FP32".into(),
            data: Some(vec![7.0]),
            ..first.clone()
        };
        let third = Tensor {
            name: "c".into(),
            datatype: "FP64".into(),
            shape: vec![1],
            parameters: Some(Map::from_iter([(BINARY_DATA_SIZE.into(), 8.into())])),
            data: None,
        };
        let second = Tensor { parameters: None, ..second };
        let mut binary = DataType::Fp16.encode(&[0.5, -2.0]);
        binary.extend(DataType::Fp64.encode(&[3.25]));
        let request = InferRequest { inputs: vec![first, second, third], ..InferRequest::default() };
        let (body, header) = join_body(&request, &binary);
        let (parsed, rest): (InferRequest, _) = split_body(&body, Some(&header.unwrap().to_string())).unwrap();
        let values = tensor_values(&parsed.inputs, rest).unwrap();
        assert_eq!(values, vec![vec![0.5, -2.0], vec![7.0], vec![3.25]]);
        assert_eq!(
            tensor_values(&parsed.inputs, &rest[1..]),
            Err(ProtocolError::BinaryLength { expected: 12, actual: 11 })
        );
        assert!(matches!(split_body::<InferRequest>(&body, Some("99999")), Err(ProtocolError::HeaderLength { .. })));
        assert!(matches!(split_body::<InferRequest>(&body, Some("-1")), Err(ProtocolError::HeaderLength { .. })));
        let wrong = Tensor { shape: vec![3], ..parsed.inputs[1].clone() };
        assert!(matches!(tensor_values(&[wrong], &[]), Err(ProtocolError::ShapeMismatch { .. })));
    }
}
