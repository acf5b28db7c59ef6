//! Errors of the GPU path.

/// What can go wrong on the GPU path. Messages name the adapter or the numbers involved.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the request (or none exists at all).
    #[error(
        "no GPU adapter found for '{requested}' (adapters present: {present}); install a Vulkan driver (scripts/setup.sh installs Mesa's lavapipe, which runs on the CPU)"
    )]
    NoAdapter { requested: String, present: String },

    /// The adapter refused a device.
    #[error("adapter {adapter} refused a device: {reason}")]
    RequestDevice { adapter: String, reason: String },

    /// f16 storage asked of an adapter without `SHADER_F16`.
    #[error("adapter {adapter} does not support f16 in shaders (SHADER_F16); use f32 storage")]
    F16Unsupported { adapter: String },

    /// A buffer larger than the adapter allows.
    #[error("{what} needs {bytes} bytes but adapter {adapter} allows at most {limit} per buffer")]
    BufferTooLarge { what: &'static str, bytes: u64, limit: u64, adapter: String },

    /// One group does not fit in one storage binding, so it cannot be chunked.
    #[error(
        "one group of {what} takes {bytes} bytes, more than the {limit}-byte storage binding limit of adapter {adapter}"
    )]
    GroupTooLarge { what: &'static str, bytes: u64, limit: u64, adapter: String },

    /// A device buffer smaller than the tensor it should hold.
    #[error("{what}: buffer holds {available} bytes from offset {offset}, the tensor needs {needed}")]
    BufferTooSmall { what: &'static str, needed: u64, available: u64, offset: u64 },

    /// A device operation failed (out of memory, lost device, failed map).
    #[error("GPU operation failed: {0}")]
    Device(String),

    /// The parameters or shapes are invalid (the same checks as the CPU path).
    #[error(transparent)]
    Codec(#[from] crate::Error),
}
