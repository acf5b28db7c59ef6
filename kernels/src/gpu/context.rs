//! Finding an adapter and opening a device on it.

use std::fmt;
use std::str::FromStr;

use super::error::GpuError;

/// The environment variable that overrides adapter choice (same values as [`AdapterChoice`]).
pub const ADAPTER_ENV: &str = "APPROXIFER_ADAPTER";

/// Which adapter to run on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best there is: a discrete GPU, else an integrated one, else a virtual one, else a
    /// CPU implementation such as lavapipe.
    #[default]
    Auto,
    /// Only a discrete GPU.
    Discrete,
    /// Only an integrated GPU.
    Integrated,
    /// Only a CPU implementation (lavapipe, SwiftShader, WARP).
    Cpu,
    /// The first adapter whose name contains this text (case-insensitive).
    Named(String),
}

impl AdapterChoice {
    /// The choice in `APPROXIFER_ADAPTER`, or `Auto` when it is unset or empty.
    pub fn from_env() -> Self {
        std::env::var(ADAPTER_ENV).ok().filter(|v| !v.is_empty()).map_or(AdapterChoice::Auto, |v| v.parse().unwrap())
    }

    fn accepts(&self, info: &wgpu::AdapterInfo) -> bool {
        use wgpu::DeviceType as T;
        match self {
            AdapterChoice::Auto => true,
            AdapterChoice::Discrete => info.device_type == T::DiscreteGpu,
            AdapterChoice::Integrated => info.device_type == T::IntegratedGpu,
            AdapterChoice::Cpu => info.device_type == T::Cpu,
            AdapterChoice::Named(name) => info.name.to_lowercase().contains(&name.to_lowercase()),
        }
    }
}

impl FromStr for AdapterChoice {
    type Err = std::convert::Infallible;

    /// `auto`, `discrete` (or `gpu`), `integrated`, `cpu`; anything else is a name to match.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_lowercase().as_str() {
            "auto" => AdapterChoice::Auto,
            "discrete" | "gpu" => AdapterChoice::Discrete,
            "integrated" => AdapterChoice::Integrated,
            "cpu" => AdapterChoice::Cpu,
            _ => AdapterChoice::Named(s.to_string()),
        })
    }
}

impl fmt::Display for AdapterChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterChoice::Auto => f.write_str("auto"),
            AdapterChoice::Discrete => f.write_str("discrete"),
            AdapterChoice::Integrated => f.write_str("integrated"),
            AdapterChoice::Cpu => f.write_str("cpu"),
            AdapterChoice::Named(name) => f.write_str(name),
        }
    }
}

/// Every adapter `choice` accepts of the best kind present (all the discrete GPUs of a
/// multi-GPU box, say), in the system's order, each with its position among the adapters of
/// its type (the index other wgpu users, such as Burn's `DeviceKind`, name it by).
fn best_adapters(choice: &AdapterChoice) -> Result<Vec<(wgpu::Adapter, usize)>, GpuError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let best = adapters.iter().map(|a| a.get_info()).filter(|i| choice.accepts(i)).map(|i| rank(i.device_type)).min();
    let Some(best) = best else {
        return Err(GpuError::NoAdapter {
            requested: choice.to_string(),
            present: if adapters.is_empty() {
                "none".into()
            } else {
                adapters.iter().map(|a| a.get_info().name).collect::<Vec<_>>().join(", ")
            },
        });
    };
    Ok(adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| choice.accepts(&a.get_info()) && rank(a.get_info().device_type) == best)
        .map(|(position, adapter)| {
            let kind = adapter.get_info().device_type;
            let index_of_type = adapters[..position].iter().filter(|a| a.get_info().device_type == kind).count();
            (adapter.clone(), index_of_type)
        })
        .collect())
}

/// The adapter `choice` selects: the first of [`best_adapters`].
fn find_adapter(choice: &AdapterChoice) -> Result<(wgpu::Adapter, usize), GpuError> {
    let mut best = best_adapters(choice)?;
    // best_adapters never returns an empty list.
    Ok(best.swap_remove(0))
}

/// Every adapter `choice` accepts of the best kind present (one per GPU on a multi-GPU box),
/// without opening devices: each one's description and index among the adapters of its type.
pub fn describe_adapters(choice: &AdapterChoice) -> Result<Vec<(wgpu::AdapterInfo, usize)>, GpuError> {
    best_adapters(choice).map(|all| all.into_iter().map(|(adapter, index)| (adapter.get_info(), index)).collect())
}

/// The adapter `choice` selects, without opening a device: its description and its index
/// among the adapters of its type.
pub fn describe_adapter(choice: &AdapterChoice) -> Result<(wgpu::AdapterInfo, usize), GpuError> {
    find_adapter(choice).map(|(adapter, index)| (adapter.get_info(), index))
}

/// Preference order of adapter kinds: lower is better.
fn rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// A device and queue on one adapter, with what the kernels need to know about it.
///
/// Every GPU operation takes a context, so applications (and tests) can bring their own
/// device through [`GpuContext::from_device`].
#[derive(Clone, Debug)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
}

impl GpuContext {
    /// Opens a device on the adapter `choice` selects (see [`AdapterChoice::Auto`] for the
    /// order), with `SHADER_F16` when the adapter has it and the adapter's own limits (so
    /// large buffers are allowed where the hardware allows them).
    pub fn new(choice: &AdapterChoice) -> Result<Self, GpuError> {
        Self::with_limits(choice, |_| {})
    }

    /// [`new`](Self::new), with the device's limits adjusted by `adjust` first (to lower
    /// them, say, and exercise the kernels' chunking on a small device).
    pub fn with_limits(choice: &AdapterChoice, adjust: impl FnOnce(&mut wgpu::Limits)) -> Result<Self, GpuError> {
        let (adapter, _) = find_adapter(choice)?;
        let info = adapter.get_info();
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let mut limits = adapter.limits();
        adjust(&mut limits);
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("approxifer"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| GpuError::RequestDevice { adapter: info.name.clone(), reason: e.to_string() })?;
        Ok(GpuContext { device, queue, info })
    }

    /// Wraps a device the application opened itself.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        GpuContext { device, queue, info }
    }

    /// The adapter's name, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// The adapter's description from the driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether this is a CPU implementation rather than a GPU.
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether kernels may use f16 storage here.
    pub fn supports_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| GpuError::Device(e.to_string()))
    }
}
