//! # approxifer
//!
//! Resilient, model-agnostic prediction serving with coded queries (ApproxIFER, AAAI 2022):
//! `K` queries are mixed by Berrut rational interpolation into `N` coded queries, every
//! worker runs the unchanged model, and the `K` predictions are decoded approximately from
//! any `N - S` responders.
//!
//! This crate holds the command-line tool and the parts around the codec; the codec itself
//! (parameters, nodes, weights, CPU reference kernels) is [`kernels`], re-exported here.

pub use approxifer_kernels as kernels;

pub mod attack;
pub mod backend;
pub mod bench;
pub mod calibration_file;
pub mod cli;
pub mod data;
pub mod demo;
pub mod embedded;
pub mod eval;
pub mod fused;
pub mod models;
pub mod npy;
pub mod parm;
pub mod plot;
pub mod serve;
pub mod train;
