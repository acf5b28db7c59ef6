//! Fault injection for the serving runtime: how long each worker takes to answer one request,
//! and whether it answers at all.
//!
//! A [`FaultPlan`] draws, per request and worker, an [`Outcome`]: an answer after a latency,
//! a hang (the request is never answered, the worker stays usable), or a crash (this and every
//! later request to the worker go unanswered). Latencies follow a base [`Latency`] model,
//! scaled by the worker's own faults and by the plan's random slowdowns. Every draw comes from
//! the caller's RNG, so a seed fixes a whole run and every scheme can face the same faults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp, Pareto};

/// A base service-time distribution.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Latency {
    /// Always `ms`.
    Constant { ms: f64 },
    /// Exponential with mean `mean_ms`.
    Exponential { mean_ms: f64 },
    /// Pareto with minimum `scale_ms` and tail index `shape` (> 1 for a finite mean): a heavy
    /// tail, as measured in real serving systems.
    Pareto { scale_ms: f64, shape: f64 },
}

/// What one worker does beyond the base latency. Fields left out of a config take
/// [`WorkerFaults::NONE`]'s values.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerFaults {
    /// Every latency multiplied by this (1 = normal; 10 = a persistently slow worker).
    pub slowdown: f64,
    /// With this probability per request, the latency is multiplied by `intermittent_factor`.
    pub intermittent_probability: f64,
    pub intermittent_factor: f64,
    /// With this probability per request, the worker never answers that request.
    pub hang_probability: f64,
    /// After this many requests, the worker crashes: it answers nothing more.
    pub crash_after: Option<u64>,
    /// With this probability per request, the worker answers wrongly (Byzantine): its answer
    /// passes through the worker's tamper hook ([`super::worker::Tamper`]).
    pub byzantine_probability: f64,
    /// A real source of straggling: a busy compute kernel on this worker's device for the
    /// whole run, square matrices of this side multiplied back to back
    /// ([`super::load::BackgroundLoad`]); every worker on that device shares it.
    pub background_load: Option<usize>,
}

impl Default for WorkerFaults {
    fn default() -> Self {
        WorkerFaults::NONE
    }
}

impl WorkerFaults {
    /// A worker with no faults.
    pub const NONE: WorkerFaults = WorkerFaults {
        slowdown: 1.0,
        intermittent_probability: 0.0,
        intermittent_factor: 1.0,
        hang_probability: 0.0,
        crash_after: None,
        byzantine_probability: 0.0,
        background_load: None,
    };
}

/// A slowdown that strikes, on a fraction of dispatches, one of the workers serving it: "one
/// random worker 10x slower on 5% of requests" hits an uncoded query's only worker 5% of the
/// time, and one of a coded group's `N` workers 5% of the time.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSlowdown {
    /// Probability per dispatch (a query, or a group for coded schemes) that one worker is slow.
    pub probability: f64,
    pub factor: f64,
}

/// The faults of a whole run. In a file (TOML; JSON when the name ends in `.json`):
///
/// ```toml
/// latency = { kind = "pareto", scale_ms = 4.0, shape = 2.5 }  # or constant { ms }, exponential { mean_ms }
/// random_slowdown = { probability = 0.05, factor = 10.0 }     # one worker of a dispatch
///
/// [[workers]]            # worker 0: persistently 10x slower
/// slowdown = 10.0
/// [[workers]]            # worker 1: slow on 2% of requests, hangs on 1%, crashes after 5000
/// intermittent_probability = 0.02
/// intermittent_factor = 20.0
/// hang_probability = 0.01
/// crash_after = 5000
/// byzantine_probability = 0.001    # answers through the worker's tamper hook
/// [[workers]]            # worker 2: its device also runs 1024 x 1024 matmuls back to back
/// background_load = 1024
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    pub latency: Latency,
    /// Per-worker faults; workers beyond the list have none.
    #[serde(default)]
    pub workers: Vec<WorkerFaults>,
    #[serde(default)]
    pub random_slowdown: Option<RandomSlowdown>,
}

/// The largest matrix side a background load may multiply.
pub const MAX_BACKGROUND_LOAD: usize = 16384;

/// One worker's fate for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Answer(Duration),
    /// An answer after the latency, altered by the worker's tamper hook.
    Tampered(Duration),
    Hang,
    Crash,
}

/// Why a plan cannot be used.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("{what} = {value}: {rule}")]
    Invalid { what: &'static str, value: f64, rule: &'static str },
}

/// Why a fault file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FaultFileError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: FaultError },
}

/// The longest latency a plan injects: a worker that slow is hung. A plan's factors multiplied
/// (or a Pareto draw) can exceed what a `Duration` holds.
pub const MAX_INJECTED: Duration = Duration::from_secs(24 * 3600);

fn require(ok: bool, what: &'static str, value: f64, rule: &'static str) -> Result<(), FaultError> {
    if ok { Ok(()) } else { Err(FaultError::Invalid { what, value, rule }) }
}

impl FaultPlan {
    /// No faults beyond `latency`.
    pub fn healthy(latency: Latency) -> Self {
        FaultPlan { latency, workers: Vec::new(), random_slowdown: None }
    }

    /// Reads and validates a plan: TOML, or JSON when the file name ends in `.json`.
    pub fn from_file(path: &Path) -> Result<Self, FaultFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| FaultFileError::Read { path: path.into(), source })?;
        let parsed = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            serde_json::from_str::<FaultPlan>(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str::<FaultPlan>(&text).map_err(|e| e.to_string().trim_end().to_owned())
        };
        let plan = parsed.map_err(|message| FaultFileError::Parse { path: path.into(), message })?;
        plan.validate().map_err(|source| FaultFileError::Invalid { path: path.into(), source })?;
        Ok(plan)
    }

    /// Checks every number, so that drawing never fails.
    pub fn validate(&self) -> Result<(), FaultError> {
        match self.latency {
            Latency::Constant { ms } => require(ms.is_finite() && ms >= 0.0, "latency ms", ms, "must be >= 0")?,
            Latency::Exponential { mean_ms } => {
                require(mean_ms.is_finite() && mean_ms > 0.0, "latency mean_ms", mean_ms, "must be > 0")?
            }
            Latency::Pareto { scale_ms, shape } => {
                require(scale_ms.is_finite() && scale_ms > 0.0, "latency scale_ms", scale_ms, "must be > 0")?;
                require(shape.is_finite() && shape > 0.0, "latency shape", shape, "must be > 0")?;
            }
        }
        for w in &self.workers {
            require(w.slowdown.is_finite() && w.slowdown > 0.0, "slowdown", w.slowdown, "must be > 0")?;
            require(
                (0.0..=1.0).contains(&w.intermittent_probability),
                "intermittent_probability",
                w.intermittent_probability,
                "must be in [0, 1]",
            )?;
            require(
                w.intermittent_factor.is_finite() && w.intermittent_factor > 0.0,
                "intermittent_factor",
                w.intermittent_factor,
                "must be > 0",
            )?;
            require(
                (0.0..=1.0).contains(&w.hang_probability),
                "hang_probability",
                w.hang_probability,
                "must be in [0, 1]",
            )?;
            require(
                (0.0..=1.0).contains(&w.byzantine_probability),
                "byzantine_probability",
                w.byzantine_probability,
                "must be in [0, 1]",
            )?;
            if let Some(side) = w.background_load {
                let ok = (1..=MAX_BACKGROUND_LOAD).contains(&side);
                require(ok, "background_load", side as f64, "must be between 1 and 16384")?;
            }
        }
        if let Some(s) = self.random_slowdown {
            require(
                (0.0..=1.0).contains(&s.probability),
                "random_slowdown probability",
                s.probability,
                "must be in [0, 1]",
            )?;
            require(s.factor.is_finite() && s.factor > 0.0, "random_slowdown factor", s.factor, "must be > 0")?;
        }
        Ok(())
    }

    /// The faults of `worker`.
    pub fn worker(&self, worker: usize) -> WorkerFaults {
        self.workers.get(worker).copied().unwrap_or(WorkerFaults::NONE)
    }

    /// The fates of the workers serving one dispatch (one query for the baselines, one group
    /// for coded schemes), given as `(worker, requests it has taken before)` (the count is for
    /// crashes). A random slowdown strikes one of these workers. The plan must be valid.
    pub fn draw(&self, serving: &[(usize, u64)], rng: &mut impl Rng) -> Vec<Outcome> {
        let slow = self
            .random_slowdown
            .filter(|s| !serving.is_empty() && rng.random_bool(s.probability))
            .map(|s| (rng.random_range(0..serving.len()), s.factor));
        serving
            .iter()
            .enumerate()
            .map(|(position, &(worker, count))| {
                let faults = self.worker(worker);
                if faults.crash_after.is_some_and(|limit| count >= limit) {
                    return Outcome::Crash;
                }
                if rng.random_bool(faults.hang_probability) {
                    return Outcome::Hang;
                }
                let mut ms = self.base_ms(rng) * faults.slowdown;
                if rng.random_bool(faults.intermittent_probability) {
                    ms *= faults.intermittent_factor;
                }
                if let Some((_, factor)) = slow.filter(|(p, _)| *p == position) {
                    ms *= factor;
                }
                let latency = Duration::try_from_secs_f64(ms / 1e3).map_or(MAX_INJECTED, |d| d.min(MAX_INJECTED));
                // Drawn only when asked for, so plans without it keep their random stream.
                if faults.byzantine_probability > 0.0 && rng.random_bool(faults.byzantine_probability) {
                    Outcome::Tampered(latency)
                } else {
                    Outcome::Answer(latency)
                }
            })
            .collect()
    }

    fn base_ms(&self, rng: &mut impl Rng) -> f64 {
        match self.latency {
            Latency::Constant { ms } => ms,
            Latency::Exponential { mean_ms } => Exp::new(1.0 / mean_ms).map_or(mean_ms, |d| d.sample(rng)),
            Latency::Pareto { scale_ms, shape } => Pareto::new(scale_ms, shape).map_or(scale_ms, |d| d.sample(rng)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn ms(o: Outcome) -> f64 {
        match o {
            Outcome::Answer(d) => d.as_secs_f64() * 1e3,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn base_latencies_have_their_documented_means() {
        let mut rng = StdRng::seed_from_u64(1);
        let mean = |plan: FaultPlan, rng: &mut StdRng| {
            (0..20_000).map(|_| ms(plan.draw(&[(0, 0)], rng)[0])).sum::<f64>() / 20_000.0
        };
        assert_eq!(mean(FaultPlan::healthy(Latency::Constant { ms: 3.0 }), &mut rng), 3.0);
        let exp = mean(FaultPlan::healthy(Latency::Exponential { mean_ms: 5.0 }), &mut rng);
        assert!((exp - 5.0).abs() < 0.15, "{exp}");
        // Pareto mean: scale * shape / (shape - 1) = 2 * 3 / 2 = 3.
        let pareto = mean(FaultPlan::healthy(Latency::Pareto { scale_ms: 2.0, shape: 3.0 }), &mut rng);
        assert!((pareto - 3.0).abs() < 0.1, "{pareto}");
    }

    #[test]
    fn factors_beyond_what_a_duration_holds_inject_the_longest_latency_not_a_panic() {
        let mut rng = StdRng::seed_from_u64(4);
        let plan = FaultPlan {
            latency: Latency::Constant { ms: 1e300 },
            workers: vec![WorkerFaults { slowdown: 1e300, ..WorkerFaults::NONE }, WorkerFaults::NONE],
            random_slowdown: None,
        };
        plan.validate().unwrap();
        let fates = plan.draw(&[(0, 0), (1, 0)], &mut rng);
        assert_eq!(fates, [Outcome::Answer(MAX_INJECTED), Outcome::Answer(MAX_INJECTED)]);
    }

    #[test]
    fn worker_faults_slow_hang_and_crash_as_configured() {
        let mut rng = StdRng::seed_from_u64(2);
        let plan = FaultPlan {
            latency: Latency::Constant { ms: 1.0 },
            workers: vec![
                WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE },
                WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE },
                WorkerFaults { crash_after: Some(3), ..WorkerFaults::NONE },
                WorkerFaults { intermittent_probability: 0.5, intermittent_factor: 4.0, ..WorkerFaults::NONE },
                WorkerFaults::NONE,
                WorkerFaults { byzantine_probability: 1.0, ..WorkerFaults::NONE },
            ],
            random_slowdown: None,
        };
        plan.validate().unwrap();
        let mut intermittent = 0;
        for request in 0..1000u64 {
            let serving: Vec<(usize, u64)> = (0..6).map(|w| (w, request)).collect();
            let fates = plan.draw(&serving, &mut rng);
            assert_eq!(fates[5], Outcome::Tampered(Duration::from_millis(1)));
            assert_eq!(ms(fates[0]), 10.0);
            assert_eq!(fates[1], Outcome::Hang);
            assert_eq!(fates[2] == Outcome::Crash, request >= 3);
            intermittent += usize::from(ms(fates[3]) == 4.0);
            assert_eq!(ms(fates[4]), 1.0, "workers beyond the list have no faults");
        }
        assert!((400..600).contains(&intermittent), "{intermittent}");
    }

    #[test]
    fn a_random_slowdown_strikes_one_serving_worker_per_dispatch_at_its_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        let plan = FaultPlan {
            latency: Latency::Constant { ms: 1.0 },
            workers: Vec::new(),
            random_slowdown: Some(RandomSlowdown { probability: 0.05, factor: 10.0 }),
        };
        let (mut struck, mut per_worker) = (0, [0usize; 9]);
        let serving: Vec<(usize, u64)> = (0..9).map(|w| (w, 0)).collect();
        for _ in 0..20_000 {
            let slow: Vec<usize> = plan
                .draw(&serving, &mut rng)
                .iter()
                .enumerate()
                .filter(|(_, o)| ms(**o) == 10.0)
                .map(|(w, _)| w)
                .collect();
            assert!(slow.len() <= 1);
            struck += slow.len();
            slow.iter().for_each(|&w| per_worker[w] += 1);
        }
        assert!((800..1200).contains(&struck), "{struck}");
        assert!(per_worker.iter().all(|&c| c > 60), "every worker can be the slow one: {per_worker:?}");
    }

    #[test]
    fn invalid_numbers_are_named() {
        let bad = FaultPlan::healthy(Latency::Exponential { mean_ms: 0.0 });
        assert!(matches!(bad.validate(), Err(FaultError::Invalid { what: "latency mean_ms", .. })));
        let bad = FaultPlan {
            workers: vec![WorkerFaults { hang_probability: 1.5, ..WorkerFaults::NONE }],
            ..FaultPlan::healthy(Latency::Constant { ms: 1.0 })
        };
        assert!(matches!(bad.validate(), Err(FaultError::Invalid { what: "hang_probability", .. })));
        let bad = FaultPlan {
            workers: vec![WorkerFaults { byzantine_probability: -0.1, ..WorkerFaults::NONE }],
            ..FaultPlan::healthy(Latency::Constant { ms: 1.0 })
        };
        assert!(matches!(bad.validate(), Err(FaultError::Invalid { what: "byzantine_probability", .. })));
        let plan: FaultPlan = serde_json::from_str(
            r#"{"latency": {"kind": "pareto", "scale_ms": 1.0, "shape": 2.5}, "workers": [{"slowdown": 10.0}]}"#,
        )
        .unwrap();
        assert_eq!(plan.worker(0).slowdown, 10.0);
        assert_eq!(plan.worker(0).hang_probability, 0.0);
        let plan: FaultPlan = serde_json::from_str(
            r#"{"latency": {"kind": "constant", "ms": 1.0}, "workers": [{"hang_probability": 0.1}]}"#,
        )
        .unwrap();
        assert_eq!((plan.worker(0).slowdown, plan.worker(0).intermittent_factor), (1.0, 1.0));
        plan.validate().unwrap();
    }

    /// The example in [`FaultPlan`]'s documentation, as a user would write it.
    const EXAMPLE: &str = r#"
latency = { kind = "pareto", scale_ms = 4.0, shape = 2.5 }
random_slowdown = { probability = 0.05, factor = 10.0 }

[[workers]]
slowdown = 10.0
[[workers]]
intermittent_probability = 0.02
intermittent_factor = 20.0
hang_probability = 0.01
crash_after = 5000
byzantine_probability = 0.001
"#;

    #[test]
    fn fault_files_read_as_toml_or_json_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("faults.toml");
        std::fs::write(&toml_path, EXAMPLE).unwrap();
        let plan = FaultPlan::from_file(&toml_path).unwrap();
        assert_eq!(plan.latency, Latency::Pareto { scale_ms: 4.0, shape: 2.5 });
        assert_eq!(plan.random_slowdown, Some(RandomSlowdown { probability: 0.05, factor: 10.0 }));
        assert_eq!(plan.worker(0), WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE });
        assert_eq!(plan.worker(1).crash_after, Some(5000));
        assert_eq!(plan.worker(1).hang_probability, 0.01);
        assert_eq!(plan.worker(1).byzantine_probability, 0.001);

        let json_path = dir.path().join("faults.json");
        std::fs::write(&json_path, serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(FaultPlan::from_file(&json_path).unwrap(), plan);

        // A misspelt key would silently mean "no fault": it is an error naming the key.
        std::fs::write(&toml_path, EXAMPLE.replace("hang_probability", "hang_probabilty")).unwrap();
        let error = FaultPlan::from_file(&toml_path).unwrap_err();
        assert!(
            matches!(error, FaultFileError::Parse { .. }) && error.to_string().contains("hang_probabilty"),
            "{error}"
        );
        std::fs::write(&toml_path, EXAMPLE.replace("factor = 10.0", "factor = -1.0")).unwrap();
        assert!(matches!(
            FaultPlan::from_file(&toml_path),
            Err(FaultFileError::Invalid { source: FaultError::Invalid { what: "random_slowdown factor", .. }, .. })
        ));
        let missing = FaultPlan::from_file(&dir.path().join("absent.toml")).unwrap_err();
        assert!(matches!(missing, FaultFileError::Read { .. }) && missing.to_string().contains("absent.toml"));
    }
}
