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

use proto::InferParameter;

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

/// `version` as the protocol sends it: empty for the server's choice.
fn version(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}
