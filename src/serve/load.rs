//! A real source of straggling: a compute kernel keeping a device busy, so that workers sharing
//! that device slow down the way they do next to another tenant, not by an injected sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use burn::tensor::{Device, Distribution, Tensor};

/// Square matrices multiplied back to back on one device, each product waited for, until
/// dropped.
pub struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundLoad {
    /// Starts multiplying `side x side` matrices on `device`.
    pub fn start(device: &Device, side: usize) -> Self {
        let (stop, passes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (stopping, counting, device) = (stop.clone(), passes.clone(), device.clone());
        let thread = std::thread::Builder::new()
            .name("approxifer-background-load".into())
            .spawn(move || {
                // Entries of size 1/side keep every product's entries within [-1, 1].
                let scale = 1.0 / side as f64;
                let a = Tensor::<2>::random([side, side], Distribution::Uniform(-scale, scale), &device);
                let b = Tensor::<2>::random([side, side], Distribution::Uniform(-scale, scale), &device);
                while !stopping.load(Ordering::Relaxed) {
                    // Reading one value back waits for the product: one kernel at a time.
                    if a.clone().matmul(b.clone()).sum().into_data().as_slice::<f32>().is_err() {
                        break;
                    }
                    counting.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the background load's thread");
        BackgroundLoad { stop, passes, thread: Some(thread) }
    }

    /// Products computed so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_load_keeps_its_device_busy_until_dropped() {
        let load = BackgroundLoad::start(&Device::flex(), 64);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let running = load.passes();
        assert!(running > 0, "no product computed in 300 ms");
        let stop = load.stop.clone();
        drop(load);
        assert!(stop.load(Ordering::Relaxed));
    }
}
