//! The WGSL sources, and the header that specialises them.
//!
//! Sources live in `shaders/` and are embedded here. Each pipeline is one source plus a header
//! fixing the storage type, the packing and `K`/`N` as constants (so loops have fixed trip
//! counts and the inputs can be held in a fixed-size private array). [`ShaderConfig::source`] is the only way a shader is put together, so
//! the naga validation in the tests covers exactly what the device compiles.

/// Every shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `shaders/encode.wgsl`.
    Encode,
    /// `shaders/decode.wgsl`.
    Decode,
    /// `shaders/copy.wgsl`: a plain copy, the bandwidth reference for benchmarks.
    Copy,
}

impl Shader {
    /// All shaders, for validation.
    pub const ALL: [Shader; 3] = [Shader::Encode, Shader::Decode, Shader::Copy];

    /// The WGSL source as written in `shaders/`.
    pub fn body(self) -> &'static str {
        match self {
            Shader::Encode => include_str!("../../../shaders/encode.wgsl"),
            Shader::Decode => include_str!("../../../shaders/decode.wgsl"),
            Shader::Copy => include_str!("../../../shaders/copy.wgsl"),
        }
    }

    /// Declarations every kernel shares (`shaders/common.wgsl`), placed before its body.
    pub const COMMON: &'static str = include_str!("../../../shaders/common.wgsl");

    /// A short name for labels.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Encode => "encode",
            Shader::Decode => "decode",
            Shader::Copy => "copy",
        }
    }
}

/// A storage type of the GPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
        }
    }

    fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
        }
    }
}

/// Invocations per workgroup: a multiple of every vendor's SIMD width (32 and 64), and small
/// enough for any adapter's limit (256 is WebGPU's guaranteed minimum).
pub const WORKGROUP_SIZE: u32 = 256;

/// What a pipeline is specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShaderConfig {
    pub shader: Shader,
    pub elem: Elem,
    /// Elements each invocation moves per row: 4 (vec4) when rows are a multiple of 4, else 1.
    pub packing: u32,
    /// `K`.
    pub queries: u32,
    /// `N`.
    pub workers: u32,
}

impl ShaderConfig {
    /// The complete WGSL: header, `shaders/common.wgsl`, then the kernel from `shaders/`.
    pub fn source(&self) -> String {
        let elem = self.elem.wgsl();
        let (packed, acc) = if self.packing == 4 {
            (format!("vec4<{elem}>"), "vec4<f32>".to_string())
        } else {
            (elem.to_string(), "f32".to_string())
        };
        let enable = if self.elem == Elem::F16 { "enable f16;\n" } else { "" };
        format!(
            "{enable}// ---- header: {shader} specialised by approxifer-kernels ----\n\
             alias Elem = {elem};\nalias Packed = {packed};\nalias PackedAcc = {acc};\n\
             const K: u32 = {k}u;\nconst N: u32 = {n}u;\nconst WORKGROUP: u32 = {wg}u;\n\
             // ---- shaders/common.wgsl ----\n{common}\n\
             // ---- shaders/{shader}.wgsl ----\n{body}",
            shader = self.shader.name(),
            k = self.queries,
            n = self.workers,
            wg = WORKGROUP_SIZE,
            common = Shader::COMMON,
            body = self.shader.body(),
        )
    }
}
