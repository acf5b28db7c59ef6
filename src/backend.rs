//! Choosing where the codec runs: the WGSL kernels on an adapter, or the CPU reference path.

use std::fmt;

use crate::kernels::gpu::{AdapterChoice, GpuCodec, GpuContext, GpuError};

/// Where encode and decode run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The GPU kernels when an adapter exists (a CPU Vulkan driver such as lavapipe counts,
    /// with a notice), else the CPU path with a notice.
    #[default]
    Auto,
    /// The CPU reference path.
    Cpu,
    /// The GPU kernels, or an error when no adapter matches.
    Gpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        })
    }
}

/// The resolved choice: a GPU codec, or the CPU path.
pub enum Engine {
    Gpu(Box<GpuCodec>),
    Cpu,
}

impl Engine {
    /// Resolves `backend`, writing what was chosen, and why, to `notices` (one line each).
    /// `gpu_capable` is false when the data cannot go to the GPU (float64), which sends `Auto`
    /// to the CPU and makes `Gpu` an error.
    pub fn select(
        backend: Backend,
        adapter: &AdapterChoice,
        gpu_capable: Result<(), String>,
        notices: &mut dyn FnMut(String),
    ) -> Result<Engine, GpuError> {
        match (backend, gpu_capable) {
            (Backend::Cpu, _) => Ok(Engine::Cpu),
            (Backend::Gpu, Err(why)) => Err(GpuError::Device(format!("--backend gpu: {why}"))),
            (Backend::Auto, Err(why)) => {
                notices(format!("approxifer: {why}; using the CPU path"));
                Ok(Engine::Cpu)
            }
            (Backend::Gpu, Ok(())) => {
                let ctx = GpuContext::new(adapter)?;
                notices(describe(&ctx));
                Ok(Engine::Gpu(Box::new(GpuCodec::new(ctx))))
            }
            (Backend::Auto, Ok(())) => match GpuContext::new(adapter) {
                Ok(ctx) => {
                    notices(describe(&ctx));
                    Ok(Engine::Gpu(Box::new(GpuCodec::new(ctx))))
                }
                Err(e) => {
                    notices(format!("approxifer: {e}; using the CPU path"));
                    Ok(Engine::Cpu)
                }
            },
        }
    }
}

/// One line naming the adapter, saying so plainly when it is a CPU implementation.
pub fn describe(ctx: &GpuContext) -> String {
    if ctx.is_cpu() {
        format!("approxifer: no GPU found; running the GPU kernels on {} (a CPU Vulkan driver)", ctx.adapter_name())
    } else {
        format!("approxifer: running on {}", ctx.adapter_name())
    }
}

/// A Burn wgpu device and the adapter behind it.
pub struct BurnDevice {
    pub device: burn::tensor::Device,
    /// The adapter's name, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub adapter: String,
    /// Whether the adapter is a CPU implementation (lavapipe) rather than a GPU, or there is
    /// none and the device is Burn's flex CPU backend.
    pub is_cpu: bool,
    /// Why the device is flex in place of an adapter ([`Self::select_or_flex`]); `None` on an
    /// adapter.
    pub fallback: Option<String>,
}

impl BurnDevice {
    /// The Burn wgpu device on the adapter `choice` selects, by the raw-wgpu path's rules.
    pub fn select(choice: &AdapterChoice) -> Result<Self, GpuError> {
        let (info, index) = crate::kernels::gpu::describe_adapter(choice)?;
        Ok(Self::on(info, index))
    }

    /// The device a model runs on: the adapter `choice` selects, except that when none was
    /// asked for (`auto`) and the best there is is a CPU Vulkan driver (lavapipe) or nothing
    /// (no Vulkan driver at all), Burn's flex CPU backend, on which the fused stages run the
    /// codec's CPU kernels: on two cores the embedded demo takes 1.1 s there against 22 s on
    /// lavapipe. An adapter asked for by kind or name is used, or is an error when missing.
    pub fn select_or_flex(choice: &AdapterChoice) -> Result<Self, GpuError> {
        let why = match Self::select(choice) {
            Ok(gpu) if !(gpu.is_cpu && *choice == AdapterChoice::Auto) => return Ok(gpu),
            Err(e) if *choice != AdapterChoice::Auto => return Err(e),
            Ok(lavapipe) => {
                format!("no GPU found ({} is a CPU Vulkan driver: --adapter cpu runs on it)", lavapipe.adapter)
            }
            Err(GpuError::NoAdapter { .. }) => "no Vulkan adapter found".into(),
            Err(other) => other.to_string(),
        };
        Ok(BurnDevice {
            device: burn::tensor::Device::flex(),
            adapter: "Burn's flex backend".into(),
            is_cpu: true,
            fallback: Some(why),
        })
    }

    /// A Burn wgpu device on every adapter `choice` accepts of the best kind present: one per
    /// GPU on a multi-GPU box.
    pub fn select_all(choice: &AdapterChoice) -> Result<Vec<Self>, GpuError> {
        let adapters = crate::kernels::gpu::describe_adapters(choice)?;
        Ok(adapters.into_iter().map(|(info, index)| Self::on(info, index)).collect())
    }

    /// The device on the adapter `info` describes, `index`-th of its type.
    fn on(info: crate::kernels::gpu::wgpu::AdapterInfo, index: usize) -> Self {
        use crate::kernels::gpu::wgpu::DeviceType;
        use burn::tensor::{Device, DeviceKind};
        let kind = match info.device_type {
            DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(index),
            DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(index),
            DeviceType::VirtualGpu => DeviceKind::VirtualGpu(index),
            DeviceType::Cpu => DeviceKind::Cpu,
            DeviceType::Other => DeviceKind::DefaultDevice,
        };
        let is_cpu = info.device_type == DeviceType::Cpu;
        BurnDevice { device: Device::wgpu(kind), adapter: info.name, is_cpu, fallback: None }
    }

    /// One line naming the adapter, saying so plainly when it is a CPU implementation.
    pub fn notice(&self) -> String {
        if let Some(why) = &self.fallback {
            format!("approxifer: {why}; running on the CPU with Burn's flex backend and the codec's CPU kernels")
        } else if self.is_cpu {
            format!("approxifer: no GPU found; running on {} (a CPU Vulkan driver)", self.adapter)
        } else {
            format!("approxifer: running on {}", self.adapter)
        }
    }
}
