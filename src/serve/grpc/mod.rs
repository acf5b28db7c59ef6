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
