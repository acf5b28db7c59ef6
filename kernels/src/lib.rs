//! # approxifer-kernels
//!
//! The codec of ApproxIFER (Soleymani et al., AAAI 2022): `K` queries are mixed by Berrut
//! rational interpolation into `N` coded queries, and the `K` predictions are recovered,
//! approximately, from any `N - S` of the `N` workers' answers.
//!
//! ## Where to start
//! 1. Validate the parameters once: [`CodeParams::builder`]`(k, n).stragglers(s).build()?`.
//! 2. Prepare a [`Code`] from them: node angles, the `N x K` [encode matrix](Code::encode_matrix),
//!    and a [decode matrix](Code::decode_matrix) for any [`Responders`] set.
//! 3. Apply it to batches with the CPU reference kernels, [`cpu::encode`] and [`cpu::decode`]
//!    (f32, f64, f16 or bf16 storage), or with the WGSL kernels of `gpu` (feature `gpu`, on by
//!    default), which are tested against them.
//!
//! With `A > 0` ([`CodeParamsBuilder::byzantine`]), [`cpu::decode_robust`] first removes the
//! workers a [`Locator`] finds lying, then decodes from the rest (module [`locate`](mod@locate) explains).
//!
//! With `T > 0` ([`CodeParamsBuilder::privacy`]), each group also mixes `T` random masks
//! ([`privacy::MaskSampler`]) so that `T` colluding workers see the queries under noise;
//! encode with [`cpu::encode_masked`].
//!
//! The math lives in [`berrut`] (weights) and [`nodes`] (exact node angles); everything else
//! takes its numbers from there.
//!
//! ```
//! use approxifer_kernels::{cpu, Code, CodeParams};
//!
//! let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build()?)?;
//! let queries = [1.0f32, 2.0, /* query 0 */ 3.0, 4.0 /* query 1 */];
//! let coded = cpu::encode_to_vec(&code, &queries, 2)?; // 3 coded queries of length 2
//! // Pretend worker 1 straggles and the model is the identity:
//! let decoded = cpu::decode_to_vec(&code, &coded, 2, &[true, false, true])?;
//! assert_eq!(decoded.len(), 4);
//! # Ok::<(), approxifer_kernels::Error>(())
//! ```

pub mod berrut;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod locate;
pub mod nodes;
pub mod privacy;
pub mod tolerance;

mod code;
mod error;
mod family;
mod matrix;
mod params;
mod shape;
mod vectorized;

pub use code::{Code, Responders};
pub use error::{Error, Result};
pub use locate::{Calibration, CalibrationBuilder, Location, Locator, locate};
pub use matrix::Matrix;
pub use params::{CodeParams, CodeParamsBuilder, Layout, MAX_WORKERS, MaskPlacement, NodeFamily};
pub use tolerance::Tolerance;
