//! Where a scheme's workers run on the box: `N` workers spread over the `G` devices (several
//! may share one, as on a box with fewer GPUs than workers), each with its own model replica.

use std::sync::Arc;

use burn::tensor::Device;

use super::faults::FaultPlan;
use super::load::BackgroundLoad;
use super::worker::{LocalWorker, ServedModel, Tamper};

/// Which device each worker runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    device_of: Vec<usize>,
    devices: usize,
}

/// Why workers cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("there is no device to place workers on")]
    NoDevices,
    #[error("--workers-per-device must be at least 1")]
    NoWorkersPerDevice,
    #[error("{workers} workers at {per_device} per device need {needed} devices, and {devices} are present")]
    TooFewDevices { workers: usize, per_device: usize, needed: usize, devices: usize },
}

impl Placement {
    /// `workers` workers on `devices` devices: round robin by default (as even as it gets), or
    /// `per_device` on each device in turn (filling one before the next).
    pub fn new(workers: usize, devices: usize, per_device: Option<usize>) -> Result<Self, PlacementError> {
        if devices == 0 {
            return Err(PlacementError::NoDevices);
        }
        let device_of = match per_device {
            None => (0..workers).map(|w| w % devices).collect(),
            Some(0) => return Err(PlacementError::NoWorkersPerDevice),
            Some(per_device) => {
                let needed = workers.div_ceil(per_device);
                if needed > devices {
                    return Err(PlacementError::TooFewDevices { workers, per_device, needed, devices });
                }
                (0..workers).map(|w| w / per_device).collect()
            }
        };
        Ok(Placement { device_of, devices })
    }

    /// The device (an index into the list placed on) of `worker`.
    pub fn device_of(&self, worker: usize) -> usize {
        self.device_of[worker]
    }

    pub fn workers(&self) -> usize {
        self.device_of.len()
    }

    /// Workers on each device.
    pub fn per_device(&self) -> Vec<usize> {
        let mut counts = vec![0; self.devices];
        for &d in &self.device_of {
            counts[d] += 1;
        }
        counts
    }
}

/// Starts one [`LocalWorker`] per placed worker on its device, with a replica made by
/// `replica(worker, device)` and Byzantine answers altered by `tamper(worker)`. Returns the
/// workers and their models (for measuring the bare forward rate on the same replicas).
pub fn local_workers(
    devices: &[Device],
    placement: &Placement,
    capacity: usize,
    replica: impl Fn(usize, &Device) -> ServedModel,
    tamper: impl Fn(usize) -> Tamper,
) -> Vec<(Arc<LocalWorker>, ServedModel)> {
    (0..placement.workers())
        .map(|w| {
            let device = &devices[placement.device_of(w)];
            let model = replica(w, device);
            let worker = LocalWorker::with_tamper(w, model.clone(), device.clone(), capacity, tamper(w));
            (Arc::new(worker), model)
        })
        .collect()
}

/// The background loads `plan` asks for: one on the device of each placed worker whose faults
/// name one. They run until dropped.
pub fn background_loads(devices: &[Device], placement: &Placement, plan: &FaultPlan) -> Vec<BackgroundLoad> {
    (0..placement.workers())
        .filter_map(|w| plan.worker(w).background_load.map(|side| (w, side)))
        .map(|(w, side)| BackgroundLoad::start(&devices[placement.device_of(w)], side))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_spread_round_robin_or_fill_devices_in_turn() {
        let spread = Placement::new(5, 2, None).unwrap();
        assert_eq!(spread.per_device(), [3, 2]);
        assert_eq!((0..5).map(|w| spread.device_of(w)).collect::<Vec<_>>(), [0, 1, 0, 1, 0]);
        let filled = Placement::new(5, 3, Some(2)).unwrap();
        assert_eq!((0..5).map(|w| filled.device_of(w)).collect::<Vec<_>>(), [0, 0, 1, 1, 2]);
        assert_eq!(
            Placement::new(5, 2, Some(2)),
            Err(PlacementError::TooFewDevices { workers: 5, per_device: 2, needed: 3, devices: 2 })
        );
        assert_eq!(Placement::new(5, 2, Some(0)), Err(PlacementError::NoWorkersPerDevice));
        assert_eq!(Placement::new(5, 0, None), Err(PlacementError::NoDevices));
    }
}
