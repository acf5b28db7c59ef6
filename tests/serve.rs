//! The serving runtime's books: every accepted query gets exactly one answer or one explicit
//! error, under injected hangs, crashes and slowdowns, overload and shutdown.

use std::sync::Arc;
use std::time::Duration;

use approxifer::kernels::{Code, CodeParams, Layout, Locator};
use approxifer::serve::{
    Codec, Coordinator, CoordinatorConfig, FaultPlan, Latency, Learning, LocalWorker, RandomSlowdown, ServeError,
    ServedModel, Stats, Worker, WorkerFaults,
};
use burn::tensor::{Device, Tensor};
use crossbeam_channel::RecvTimeoutError;
use support::{C, D, coordinator_config, expected, model, query};

mod support;

fn worker(i: usize, model: ServedModel, capacity: usize) -> LocalWorker {
    LocalWorker::start(i, model, Device::flex(), capacity)
}

fn workers(n: usize, capacity: usize) -> Vec<Arc<dyn Worker>> {
    (0..n).map(|i| Arc::new(worker(i, model(), capacity)) as Arc<dyn Worker>).collect()
}

/// `n` workers over the test model whose answers pass through `tamper` when their fault plan
/// says so.
fn tampering_workers(n: usize, tamper: &approxifer::serve::Tamper) -> Vec<Arc<dyn Worker>> {
    (0..n)
        .map(|i| Arc::new(LocalWorker::with_tamper(i, model(), Device::flex(), 100, tamper.clone())) as Arc<dyn Worker>)
        .collect()
}

/// The test model answering one row too many for every batch: a failure its worker reports.
fn one_row_too_many() -> ServedModel {
    let inner = model();
    Arc::new(move |x: Tensor<2>| {
        let y = inner.forward(x);
        Tensor::cat(vec![y.clone(), y.narrow(0, 0, 1)], 0)
    })
}

fn config(code: Code, faults: Option<FaultPlan>, capacity: usize, deadline_ms: u64) -> CoordinatorConfig {
    coordinator_config(code, faults, capacity, Duration::from_millis(deadline_ms))
}

/// A baseline over the test model that sends every query alone and at once.
fn one_query_per_batch(
    policy: approxifer::serve::Policy,
    faults: Option<(FaultPlan, u64)>,
    deadline: Duration,
    capacity: usize,
) -> approxifer::serve::BaselineConfig {
    approxifer::serve::BaselineConfig {
        policy,
        input_len: D,
        output_len: C,
        max_batch: 1,
        max_queue_delay: Duration::ZERO,
        deadline,
        capacity,
        faults,
    }
}

fn max_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
}

/// Submits `pairs` groups of two queries one after the other to a code with `K = 2`: the
/// largest error of their answers against the model's.
fn worst_error_of_pairs(coordinator: &Coordinator, pairs: usize) -> f32 {
    let mut worst = 0.0f32;
    for pair in 0..pairs {
        let tickets = coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let answer = ticket.recv().unwrap().expect("answered before the deadline");
            worst = worst.max(max_error(&answer.output, &expected(&query(2 * pair + i))));
        }
    }
    worst
}

#[test]
fn a_hundred_thousand_queries_under_faults_balance_the_books() {
    let code = Code::new(CodeParams::builder(4, 6).stragglers(2).layout(Layout::Systematic).build().unwrap()).unwrap();
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![
            WorkerFaults { hang_probability: 0.02, ..WorkerFaults::NONE },
            WorkerFaults { crash_after: Some(10_000), ..WorkerFaults::NONE },
            WorkerFaults { intermittent_probability: 0.002, intermittent_factor: 1.0, ..WorkerFaults::NONE },
        ],
        random_slowdown: Some(RandomSlowdown { probability: 0.05, factor: 10.0 }),
    };
    // Hedges on: late and duplicate answers must not unbalance the books either.
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(5)), ..config(code, Some(plan), 2048, 200) };
    let coordinator = Arc::new(Coordinator::start(config, workers(6, 4096)).unwrap());
    let (submitters, per_submitter) = (4, 25_000);
    let results: Vec<(usize, usize, usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..submitters)
            .map(|t| {
                let coordinator = coordinator.clone();
                s.spawn(move || {
                    let (mut tickets, mut overloaded) = (Vec::with_capacity(per_submitter), 0);
                    for i in 0..per_submitter {
                        loop {
                            match coordinator.submit(query(t * per_submitter + i)) {
                                Ok(ticket) => break tickets.push(ticket),
                                Err(ServeError::Overloaded { .. }) => {
                                    overloaded += 1;
                                    std::thread::sleep(Duration::from_micros(200));
                                }
                                Err(e) => panic!("unexpected refusal: {e}"),
                            }
                        }
                    }
                    let (mut ok, mut errors, mut approximate) = (0, 0, 0);
                    for ticket in tickets {
                        match ticket.recv_timeout(Duration::from_secs(30)).expect("every accepted query is answered") {
                            Ok(answer) => {
                                assert_eq!(answer.output.len(), C);
                                assert!(answer.output.iter().all(|v| v.is_finite()));
                                ok += 1;
                                approximate += usize::from(answer.approximate);
                            }
                            Err(ServeError::DeadlineMissed { .. } | ServeError::WorkersUnavailable { .. }) => {
                                errors += 1
                            }
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                        // The sender is dropped just after the send: wait for that, not race it.
                        let after = ticket.recv_timeout(Duration::from_secs(5));
                        assert!(matches!(after, Err(RecvTimeoutError::Disconnected)), "exactly one answer: {after:?}");
                    }
                    (ok, errors, approximate, overloaded)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let errors: usize = results.iter().map(|r| r.1).sum();
    let approximate: usize = results.iter().map(|r| r.2).sum();
    assert_eq!(ok + errors, submitters * per_submitter, "the books balance");
    assert_eq!(coordinator.in_flight(), 0);
    let stats = Arc::into_inner(coordinator).unwrap().shutdown();
    assert_eq!((stats.answered + stats.errors) as usize, submitters * per_submitter);
    // Per worker, the same books: late and non-finite answers add up to the totals, nobody
    // answers more than it was sent.
    let total = |count: fn(&approxifer::serve::WorkerStats) -> u64| stats.workers.iter().map(count).sum::<u64>();
    assert_eq!(total(|w| w.late_answers), stats.late_responses);
    assert_eq!(total(|w| w.non_finite_rows), stats.non_finite_answers);
    assert!(stats.workers.iter().all(|w| w.late_answers <= w.answers && w.answers <= w.requests), "{stats:?}");
    // With S = 2, a hang on worker 0 and a crashed worker 1 leave the groups decodable.
    assert!(errors * 100 < ok, "{errors} errors against {ok} answers");
    // Systematic: a prediction is approximate only when its own worker did not answer.
    assert!(approximate > 0 && approximate < ok, "{approximate} of {ok}");
}

#[test]
fn beyond_capacity_queries_are_refused_at_once_and_hung_groups_fail_at_their_deadline() {
    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let all_hang = FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE }; 3],
        random_slowdown: None,
    };
    let coordinator = Coordinator::start(config(code, Some(all_hang), 4, 50), workers(3, 16)).unwrap();
    let tickets: Vec<_> = (0..4).map(|i| coordinator.submit(query(i)).unwrap()).collect();
    assert!(matches!(coordinator.submit(query(9)), Err(ServeError::Overloaded { in_flight: 4 })));
    assert!(matches!(coordinator.submit(vec![0.0; D + 1]), Err(ServeError::BadInput { expected: D, actual: 7 })));
    for ticket in tickets {
        let result = ticket.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(result, Err(ServeError::DeadlineMissed { answered: 0, needed: 2, deadline_ms: 50 })),
            "{result:?}"
        );
    }
    assert_eq!(coordinator.in_flight(), 0);
    assert!(coordinator.submit(query(5)).is_ok(), "capacity is released");
}

#[test]
fn shutdown_answers_or_rejects_every_accepted_query() {
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let slow = FaultPlan::healthy(Latency::Exponential { mean_ms: 0.2 });
    // Batches go only when full (8 groups, 32 queries): 1001 queries leave 9 in the batcher,
    // two groups and a partial one, which must still be sent at shutdown.
    let config =
        CoordinatorConfig { max_queue_delay: Duration::from_secs(60), ..config(code, Some(slow), 10_000, 500) };
    let coordinator = Coordinator::start(config, workers(5, 10_000)).unwrap();
    let tickets: Vec<_> = (0..1001).map(|i| coordinator.submit(query(i)).unwrap()).collect();
    let stats = coordinator.shutdown();
    assert_eq!(stats.groups, 251);
    let mut answered = 0;
    for ticket in tickets {
        let result = ticket.recv_timeout(Duration::from_secs(1)).expect("answered before shutdown returned");
        answered += usize::from(result.is_ok());
    }
    assert_eq!(answered as u64, stats.answered);
    assert_eq!(answered, 1001, "no faults: every query decoded");
}

#[test]
fn decoded_answers_approximate_the_model_and_exact_ones_equal_it() {
    let code = Code::new(CodeParams::builder(3, 5).stragglers(1).layout(Layout::Systematic).build().unwrap()).unwrap();
    let coordinator = Coordinator::start(config(code, None, 100, 500), workers(5, 100)).unwrap();
    for i in 0..30 {
        let answer = coordinator.submit(query(i)).unwrap().recv().unwrap().unwrap();
        let exact = expected(&query(i));
        // No faults: every systematic worker answers (first N - S = 4 of 5 may omit one).
        let error = answer.output.iter().zip(&exact).map(|(a, e)| (a - e).abs()).fold(0.0f32, f32::max);
        if answer.approximate {
            assert!(error < 1.0, "query {i}: {:?} vs {exact:?}", answer.output);
        } else {
            assert!(error < 1e-5, "query {i}: exact answers are the model's own: {:?} vs {exact:?}", answer.output);
        }
    }
}

#[test]
fn baselines_give_the_models_own_answers_and_replication_and_hedging_survive_a_dead_worker() {
    use approxifer::serve::{Baseline, Policy};
    // Worker 0 of 4 never answers: uncoded queries sent there miss their deadline; a second
    // copy, or a hedge sent elsewhere, is answered.
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 0.5 },
        workers: vec![WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE }],
        random_slowdown: None,
    };
    let run = |policy: Policy| {
        // One query per batch, all submitted at once: the dead worker takes the first, and
        // later ones while it has no more outstanding than the others.
        let config = one_query_per_batch(policy, Some((plan.clone(), 5)), Duration::from_millis(100), 1000);
        let baseline = Baseline::start(config, workers(4, 1000)).unwrap();
        let tickets: Vec<_> = (0..40).map(|i| baseline.submit(query(i)).unwrap()).collect();
        let mut missed = 0;
        for (i, ticket) in tickets.into_iter().enumerate() {
            match ticket.recv_timeout(Duration::from_secs(5)).expect("every query is answered") {
                Ok(answer) => {
                    let error = max_error(&answer.output, &expected(&query(i)));
                    assert!(error < 1e-5, "baselines return the model's own answer: {error}");
                    assert!(!answer.approximate);
                }
                Err(ServeError::DeadlineMissed { .. }) => missed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let stats = baseline.shutdown();
        assert_eq!(stats.answered + stats.errors, 40);
        missed
    };
    // At most every fourth query (round robin among equally loaded workers), however the
    // answers of the others interleave with the dispatches.
    let missed = run(Policy::Uncoded);
    assert!((1..=10).contains(&missed), "{missed} queries sent to the dead worker");
    assert_eq!(run(Policy::Replication { copies: 2 }), 0);
    assert_eq!(run(Policy::Hedged { after: Duration::from_millis(5) }), 0);
}

#[test]
fn a_baseline_sends_a_batch_whose_model_failed_to_another_worker_at_once() {
    use approxifer::serve::{Baseline, Policy};
    // Worker 0's model answers one row too many for every batch (a failure the worker
    // reports): each uncoded query sent there is answered by another worker, long before its
    // deadline.
    let failing = one_row_too_many();
    let mut pool: Vec<Arc<dyn Worker>> = vec![Arc::new(worker(0, failing, 1000))];
    pool.extend((1..3).map(|i| Arc::new(worker(i, model(), 1000)) as Arc<dyn Worker>));
    let config = one_query_per_batch(Policy::Uncoded, None, Duration::from_secs(30), 1000);
    let baseline = Baseline::start(config, pool).unwrap();
    let started = std::time::Instant::now();
    let tickets: Vec<_> = (0..40).map(|i| baseline.submit(query(i)).unwrap()).collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        let answer = ticket.recv_timeout(Duration::from_secs(20)).unwrap().expect("answered");
        assert!(max_error(&answer.output, &expected(&query(i))) < 1e-5, "query {i}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "no batch waited for its deadline");
    let stats = baseline.shutdown();
    assert_eq!((stats.answered, stats.errors), (40, 0));
    assert!(stats.workers[0].requests > 0, "the failing worker was sent batches: {:?}", stats.workers);
}

#[test]
fn a_coded_batch_whose_workers_failed_beyond_what_its_code_spares_is_hedged_at_once() {
    // K = 2, N = 3, S = 1: workers 0 and 1's models answer one row too many (a failure the
    // workers report), so each group has one answer where it needs two. The batch's hedge is
    // three seconds off, and every batch is answered long before: worker 2 gets the failed
    // rows the moment the code cannot spare them.
    let failing = one_row_too_many();
    let mut pool: Vec<Arc<dyn Worker>> =
        (0..2).map(|i| Arc::new(worker(i, failing.clone(), 1000)) as Arc<dyn Worker>).collect();
    pool.push(Arc::new(worker(2, model(), 1000)));
    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let config = CoordinatorConfig { hedge_after: Some(Duration::from_secs(3)), ..config(code, None, 1000, 30_000) };
    let coordinator = Coordinator::start(config, pool).unwrap();
    let started = std::time::Instant::now();
    for pair in 0..3 {
        let tickets = coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let answer = ticket.recv_timeout(Duration::from_secs(20)).unwrap().expect("answered");
            assert!(max_error(&answer.output, &expected(&query(2 * pair + i))) < 1.0, "query {}", 2 * pair + i);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2), "a batch waited for its hedge: {:?}", started.elapsed());
    let stats = coordinator.shutdown();
    assert_eq!((stats.decoded_groups, stats.errors), (3, 0));
    assert!(stats.hedged_requests >= 3, "{stats:?}");
}

#[test]
fn a_panicking_model_loses_requests_not_the_worker() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let code = Code::new(CodeParams::builder(2, 4).stragglers(2).build().unwrap()).unwrap();
    // Each healthy worker waits until the flaky one has started as many groups as itself, so
    // that no group is decoded (and the flaky worker's part skipped as no longer needed) before
    // the flaky model ran on it: on a loaded machine its thread may otherwise never get there.
    // The warm-up's batches (all zeros, not as many for every worker) are not counted.
    let is_warm_up = |x: &Tensor<2>| x.clone().abs().sum().into_scalar::<f32>() == 0.0;
    let flaky_started = Arc::new(AtomicUsize::new(0));
    let healthy = |i: usize| -> Arc<dyn Worker> {
        let (f, flaky_started, own) = (model(), flaky_started.clone(), AtomicUsize::new(0));
        let waiting: ServedModel = Arc::new(move |x: Tensor<2>| {
            if is_warm_up(&x) {
                return f.forward(x);
            }
            let n = own.fetch_add(1, Ordering::SeqCst) + 1;
            let until = std::time::Instant::now() + Duration::from_secs(15);
            while flaky_started.load(Ordering::SeqCst) < n && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            f.forward(x)
        });
        Arc::new(worker(i, waiting, 100))
    };
    // It fails once (unwinding with a symbolised backtrace under RUST_BACKTRACE=1 takes seconds
    // on a loaded 2-core machine, and the groups after it wait for it), then serves on.
    let (failed_once, served_after) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (f, started, failed, after) = (model(), flaky_started.clone(), failed_once.clone(), served_after.clone());
    let flaky: ServedModel = Arc::new(move |x: Tensor<2>| {
        if is_warm_up(&x) {
            return f.forward(x);
        }
        started.fetch_add(1, Ordering::SeqCst);
        let first: f32 = x.clone().narrow(0, 0, 1).narrow(1, 0, 1).into_scalar();
        if failed.load(Ordering::SeqCst) {
            after.fetch_add(1, Ordering::SeqCst);
        } else if first > 0.3 {
            failed.store(true, Ordering::SeqCst);
            panic!("model failure")
        }
        f.forward(x)
    });
    let flaky = Arc::new(worker(3, flaky, 100));
    let mut pool: Vec<Arc<dyn Worker>> = (0..3).map(healthy).collect();
    pool.push(flaky.clone());
    let coordinator = Coordinator::start(config(code, None, 100, 60_000), pool).unwrap();
    // A full group at a time: every worker, the flaky one too, gets every group.
    let answered: usize = (0..20)
        .map(|pair| {
            let tickets = coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap();
            tickets.into_iter().filter(|t| t.recv().unwrap().is_ok()).count()
        })
        .sum();
    assert_eq!(answered, 40, "S = 2 covers the failing worker");
    drop(coordinator);
    assert!(failed_once.load(Ordering::SeqCst), "the model never failed: the test tests nothing");
    // The failure is counted once its unwinding is done.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while flaky.failed() == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(flaky.failed(), 1, "the one failure is counted");
    assert!(served_after.load(Ordering::SeqCst) > 0, "the worker serves on after the failure");
}

#[test]
fn work_nobody_needs_any_more_is_skipped_not_queued_behind_a_straggler() {
    use approxifer::serve::{Baseline, Policy};
    // Worker 0 takes 100 ms a request, the others 1 ms. Without cancellation it would work
    // through every request queued to it (2 s); its groups (and the other copies) are answered
    // by the fast workers long before, so it skips what it had not started.
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 1.0 },
        workers: vec![WorkerFaults { slowdown: 100.0, ..WorkerFaults::NONE }],
        random_slowdown: None,
    };
    let local = || -> Vec<Arc<LocalWorker>> { (0..3).map(|i| Arc::new(worker(i, model(), 100))).collect() };
    let shared = |local: &[Arc<LocalWorker>]| local.iter().map(|w| w.clone() as Arc<dyn Worker>).collect::<Vec<_>>();
    let check = |scheme: &dyn approxifer::serve::Scheme, slow: &LocalWorker, what: &str| {
        let tickets: Vec<_> = (0..40).map(|i| scheme.submit(query(i)).unwrap()).collect();
        for ticket in tickets {
            assert!(ticket.recv_timeout(Duration::from_secs(5)).unwrap().is_ok(), "{what}");
        }
        // It started one or two requests before their groups were answered; once those are
        // done (in 100 to 200 ms), the rest of its queue is skipped at once.
        std::thread::sleep(Duration::from_millis(400));
        let (busy, skipped) = (slow.busy(), slow.skipped());
        assert!(busy < Duration::from_millis(350) && skipped >= 15, "{what}: busy {busy:?}, {skipped} skipped");
        // The scheme's books tell the straggler by its time per answer: 100 ms against 1 ms.
        let books = scheme.stats().workers;
        let per_answer = |w: usize| Duration::from_nanos(books[w].busy_ns / books[w].answers.max(1));
        assert!(books[0].answers >= 1 && per_answer(0) >= Duration::from_millis(95), "{what}: {books:?}");
        assert!(per_answer(1) < Duration::from_millis(20) && per_answer(2) < Duration::from_millis(20), "{what}");
    };

    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let workers = local();
    // One group per batch, so that the slow worker has many requests queued.
    let config_one = CoordinatorConfig { max_batch: 1, ..config(code, Some(plan.clone()), 100, 2000) };
    let coordinator = Coordinator::start(config_one, shared(&workers)).unwrap();
    check(&coordinator, &workers[0], "coded groups");
    drop(coordinator);

    let workers = local();
    let config = one_query_per_batch(Policy::Replication { copies: 3 }, Some((plan, 1)), Duration::from_secs(2), 100);
    let replication = Baseline::start(config, shared(&workers)).unwrap();
    check(&replication, &workers[0], "replicas");
}

#[test]
fn an_uncoded_batch_goes_to_a_free_worker_not_behind_a_straggler() {
    use approxifer::serve::{Baseline, Policy};
    // Two workers, worker 0 taking 300 ms a request and worker 1 30 ms. A goes to worker 0, B
    // to worker 1; C comes once B is answered, while worker 0 still has A: it goes to worker 1
    // and is answered in one service time (round robin would queue it behind A, 240 ms more).
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 30.0 },
        workers: vec![WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE }],
        random_slowdown: None,
    };
    let config = one_query_per_batch(Policy::Uncoded, Some((plan, 1)), Duration::from_secs(2), 100);
    let uncoded = Baseline::start(config, workers(2, 100)).unwrap();
    let a = uncoded.submit(query(0)).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let b = uncoded.submit(query(1)).unwrap();
    b.recv().unwrap().expect("answered");
    let c_sent = std::time::Instant::now();
    let c = uncoded.submit(query(2)).unwrap();
    let answer = c.recv().unwrap().expect("answered");
    let c_took = c_sent.elapsed();
    assert!(max_error(&answer.output, &expected(&query(2))) < 1e-4);
    assert!(a.recv().unwrap().is_ok());
    assert!(c_took < Duration::from_millis(150), "C took {c_took:?}: it queued behind A");
}

#[test]
fn a_coordinator_coding_on_the_gpu_answers_as_one_coding_on_the_cpu() {
    use approxifer::kernels::gpu::{AdapterChoice, GpuCodec, GpuContext};
    use approxifer::kernels::tolerance::Tolerance;
    let ctx = GpuContext::new(&AdapterChoice::from_env())
        .unwrap_or_else(|e| panic!("{e} (scripts/setup.sh installs lavapipe; CI needs an adapter)"));
    let gpu = Codec::Gpu(Arc::new(GpuCodec::new(ctx)));
    // Workers 1 and 4 of N = 6 never answer: every group decodes from the other four, so the
    // two runs decode from the same responders (with S spare workers answering, which K come
    // first would be up to the scheduler).
    let hung = WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE };
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![WorkerFaults::NONE, hung, WorkerFaults::NONE, WorkerFaults::NONE, hung],
        random_slowdown: None,
    };
    let answers = |codec: Codec| -> Vec<Vec<f32>> {
        let code = Code::new(CodeParams::builder(4, 6).stragglers(2).build().unwrap()).unwrap();
        // One group per batch, sent when whole: both runs form the same groups however loaded
        // the machine (with a 2 ms queue delay a descheduled coordinator could send a group's
        // first queries alone, coded for a smaller K: another approximation).
        let config = CoordinatorConfig {
            codec,
            max_batch: 1,
            max_queue_delay: Duration::from_secs(1),
            ..config(code, Some(plan.clone()), 1000, 2000)
        };
        // One group at a time, so both runs form the same groups.
        let coordinator = Coordinator::start(config, workers(6, 1000)).unwrap();
        (0..10)
            .flat_map(|g| {
                let tickets: Vec<_> = (0..4).map(|i| coordinator.submit(query(4 * g + i)).unwrap()).collect();
                tickets.into_iter().map(|t| t.recv().unwrap().map(|a| a.output).unwrap_or_default()).collect::<Vec<_>>()
            })
            .collect()
    };
    let (on_cpu, on_gpu) = (answers(Codec::Cpu), answers(gpu));
    assert!(on_cpu.iter().all(|a| a.len() == C), "every group decodes");
    for (i, (c, g)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        let close = Tolerance::BALANCED.check(g.iter().map(|&v| f64::from(v)), c.iter().map(|&v| f64::from(v)));
        assert!(close.is_ok(), "query {i}: cpu {c:?} vs gpu {g:?}: {close:?}");
    }
}

#[test]
fn byzantine_answers_pass_through_the_workers_tamper_hook_and_corrupt_plain_decoding() {
    // K = 2, N = 3, S = 0, A = 0: every answer is used, so one wrong answer reaches the
    // decode; here the hook must deliver it (the next test removes it).
    let byzantine = |probability: f64| FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![WorkerFaults::NONE, WorkerFaults { byzantine_probability: probability, ..WorkerFaults::NONE }],
        random_slowdown: None,
    };
    let worst_error = |plan: FaultPlan| -> f32 {
        let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
        let workers = tampering_workers(3, &shift);
        let code = Code::new(CodeParams::builder(2, 3).build().unwrap()).unwrap();
        let coordinator = Coordinator::start(config(code, Some(plan), 100, 2000), workers).unwrap();
        (0..20)
            .map(|i| {
                let answer = coordinator.submit(query(i)).unwrap().recv().unwrap().unwrap();
                max_error(&answer.output, &expected(&query(i)))
            })
            .fold(0.0f32, f32::max)
    };
    let (honest, attacked) = (worst_error(byzantine(0.0)), worst_error(byzantine(1.0)));
    assert!(honest < 1.0, "{honest}");
    assert!(attacked > 10.0, "the shifted answers reach the decode: {attacked}");
}

/// Runs 20 queries (K = 2) through a coordinator whose worker 1 always answers through `tamper`;
/// returns the largest error of any answer and the coordinator's books.
fn with_a_liar(code: Code, tamper: approxifer::serve::Tamper, adjust: impl FnOnce(&mut FaultPlan)) -> (f32, Stats) {
    let n = code.params().workers();
    let mut faults = vec![WorkerFaults::NONE; n];
    faults[1].byzantine_probability = 1.0;
    let mut plan = FaultPlan { latency: Latency::Constant { ms: 0.0 }, workers: faults, random_slowdown: None };
    adjust(&mut plan);
    let workers = tampering_workers(n, &tamper);
    let coordinator = Coordinator::start(config(code, Some(plan), 100, 2000), workers).unwrap();
    // Two queries at a time: one full group each, which every worker (the liar too) serves.
    let worst = (0..10)
        .flat_map(|pair| {
            let tickets = coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap();
            tickets.into_iter().enumerate().map(move |(i, t)| (2 * pair + i, t.recv().unwrap().unwrap()))
        })
        .map(|(i, answer)| max_error(&answer.output, &expected(&query(i))))
        .fold(0.0f32, f32::max);
    (worst, coordinator.shutdown())
}

#[test]
fn a_byzantine_code_removes_the_liar_before_decoding() {
    // K = 2, A = 1, S = 0: N = 2K + 2A + S - 1 = 5, worker 1 always shifted by 100.
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let (worst, stats) = with_a_liar(code, shift, |_| {});
    assert!(worst < 1.0, "the liar reached an answer: error {worst}");
    assert_eq!(stats.located_workers, stats.decoded_groups, "one liar located per group");
    // S = 0: every group waits for every worker, and the locator judges every answer.
    for (w, worker) in stats.workers.iter().enumerate() {
        assert_eq!(worker.judged, stats.decoded_groups, "worker {w}: {stats:?}");
        assert_eq!(worker.located, if w == 1 { stats.decoded_groups } else { 0 }, "worker {w}: {stats:?}");
    }
}

#[test]
fn a_liar_that_answers_a_hedges_copy_too_has_both_its_answers_removed() {
    // K = 2, A = 1, S = 1: N = 6. Workers 4 and 5 hang, so every group is one answer short
    // and hedged after 100 ms: its two missing coded queries go to the first two workers that
    // answered, 0 (ten times slower) and 1, the liar, whose copy comes back first. The group
    // then holds two shifted answers from one worker, one more than the locator looks for:
    // both must go.
    let code = Code::new(CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let mut faults = vec![WorkerFaults::NONE; 6];
    faults[0].slowdown = 10.0;
    faults[1].byzantine_probability = 1.0;
    faults[4].hang_probability = 1.0;
    faults[5].hang_probability = 1.0;
    let plan = FaultPlan { latency: Latency::Constant { ms: 5.0 }, workers: faults, random_slowdown: None };
    let workers = tampering_workers(6, &shift);
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(100)), ..config(code, Some(plan), 100, 5000) };
    let coordinator = Coordinator::start(config, workers).unwrap();
    let worst = worst_error_of_pairs(&coordinator, 8);
    let stats = coordinator.shutdown();
    assert_eq!(stats.decoded_groups, 8, "{stats:?}");
    assert!(stats.hedged_requests >= 16, "every group hedged: {stats:?}");
    assert!(worst < 1.0, "a liar's second answer reached the decode: error {worst}");
    assert!(stats.workers[1].located >= 2 * 8, "both its answers in every group: {stats:?}");
}

#[test]
fn a_liars_rows_filling_a_nan_answer_are_its_own_and_removed_with_its_other_answer() {
    // K = 2, A = 1, S = 1: N = 6. Workers 4 and 5 answer NaN: their nodes' rows are hedged
    // after 100 ms and filled from the copies of the first two workers that answered, 0 (ten
    // times slower) and 1, the liar, whose copy comes first. The group then holds two
    // shifted answers from the liar, one in a node another worker answered first (with NaN):
    // both are the liar's, and both must go.
    let code = Code::new(CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let nan: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.fill(f32::NAN));
    let mut faults = vec![WorkerFaults::NONE; 6];
    faults[0].slowdown = 10.0;
    for liar in [1, 4, 5] {
        faults[liar].byzantine_probability = 1.0;
    }
    let plan = FaultPlan { latency: Latency::Constant { ms: 5.0 }, workers: faults, random_slowdown: None };
    let workers: Vec<Arc<dyn Worker>> = (0..6)
        .map(|i| {
            let tamper = if i >= 4 { nan.clone() } else { shift.clone() };
            Arc::new(LocalWorker::with_tamper(i, model(), Device::flex(), 100, tamper)) as Arc<dyn Worker>
        })
        .collect();
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(100)), ..config(code, Some(plan), 100, 5000) };
    let coordinator = Coordinator::start(config, workers).unwrap();
    let worst = worst_error_of_pairs(&coordinator, 8);
    let stats = coordinator.shutdown();
    assert_eq!(stats.decoded_groups, 8, "{stats:?}");
    assert!(worst < 1.0, "a liar's second answer reached the decode: error {worst}");
    assert!(stats.workers[1].located >= 2 * 8, "both its answers in every group: {stats:?}");
    assert_eq!(stats.workers[4].located + stats.workers[5].located, 0, "{stats:?}");
}

#[test]
fn a_hedge_gives_no_worker_more_than_one_other_node_of_a_group_with_liars() {
    // K = 2, A = 1, S = 1: N = 6. Workers 4 and 5 hang, 1-3 take 100 ms, and worker 0, the
    // liar, answers in 10 ms: at the hedge (30 ms) it is the one helper for the five nodes
    // not answered yet. Given them all it would answer the whole group, every answer a lie
    // (error 100 before this rule); it takes one, and the rest go to workers 1-3 once they
    // have answered.
    let code = Code::new(CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let mut faults = vec![WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE }; 6];
    faults[0] = WorkerFaults { byzantine_probability: 1.0, ..WorkerFaults::NONE };
    faults[4].hang_probability = 1.0;
    faults[5].hang_probability = 1.0;
    let plan = FaultPlan { latency: Latency::Constant { ms: 10.0 }, workers: faults, random_slowdown: None };
    let workers = tampering_workers(6, &shift);
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(30)),
        trace_slower_than: Some(Duration::ZERO),
        ..config(code, Some(plan), 100, 5000)
    };
    let coordinator = Coordinator::start(config, workers).unwrap();
    let worst = worst_error_of_pairs(&coordinator, 4);
    let stats = coordinator.shutdown();
    let traces: Vec<String> = stats.slow_batches.iter().map(ToString::to_string).collect();
    assert!(worst < 1.0, "the liar's answers reached the decode: error {worst}: {traces:#?}");
    assert_eq!(stats.decoded_groups, 4, "{stats:?}");
    // Its own node and one copy per group, both removed.
    assert_eq!(stats.workers[0].located, 2 * 4, "{stats:?}");
}

#[test]
fn a_code_with_no_spare_answer_decodes_once_a_hedges_copy_completes_its_groups() {
    // K = 2, A = 1, S = 0: N = 5, and a group needs every node. Worker 4 hangs, so its node is
    // hedged to a worker that then holds two nodes of the group: were it located, both would
    // go, one more than the code spares. With every node answered nothing more can come, so
    // the group decodes (removing what the code can) rather than wait for its deadline.
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let mut faults = vec![WorkerFaults::NONE; 5];
    faults[4].hang_probability = 1.0;
    let plan = FaultPlan { latency: Latency::Constant { ms: 5.0 }, workers: faults, random_slowdown: None };
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(30)), ..config(code, Some(plan), 100, 3000) };
    let coordinator = Coordinator::start(config, workers(5, 100)).unwrap();
    let start = std::time::Instant::now();
    let worst = worst_error_of_pairs(&coordinator, 4);
    assert!(worst < 1.0, "error {worst}");
    assert!(start.elapsed() < Duration::from_millis(2000), "{:?}", start.elapsed());
    let stats = coordinator.shutdown();
    assert_eq!((stats.decoded_groups, stats.hedged_requests), (4, 4), "{stats:?}");
}

#[test]
fn the_coordinator_learns_a_calibrated_locator_from_the_groups_that_agree() {
    // K = 2, A = 1, N = 5; worker 1 shifts its answer by 100 on half of its batches. The robust
    // locator removes it; the groups less the answers removed teach the calibrated locator,
    // which takes over after 30 of them and keeps removing the liar.
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let mut faults = vec![WorkerFaults::NONE; 5];
    faults[1].byzantine_probability = 0.5;
    let plan = FaultPlan { latency: Latency::Constant { ms: 0.0 }, workers: faults, random_slowdown: None };
    let shift: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v += 100.0));
    let workers = tampering_workers(5, &shift);
    let learning = Learning { refit_every: 30, ..Learning::default() };
    let config = CoordinatorConfig { learning: Some(learning), ..config(code, Some(plan), 100, 2000) };
    let coordinator = Coordinator::start(config, workers).unwrap();
    assert_eq!(coordinator.locator_state().locator, "robust");
    let mut worst = 0.0f32;
    let mut ask = |from: usize| {
        for pair in from..from + 100 {
            let tickets = coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap();
            for (i, ticket) in tickets.into_iter().enumerate() {
                let answer = ticket.recv().unwrap().unwrap();
                worst = worst.max(max_error(&answer.output, &expected(&query(2 * pair + i))));
            }
        }
    };
    ask(0);
    // The learner fits on its own thread.
    let started = std::time::Instant::now();
    while coordinator.locator_state().refits == 0 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = coordinator.locator_state();
    assert_eq!(state.locator, "calibrated", "{state:?}");
    assert!(state.learning && state.refits >= 1 && state.calibration_groups >= 30, "{state:?}");
    assert!(state.observed_groups >= state.calibration_groups, "{state:?}");
    assert!(state.thresholds.len() == 5 && state.thresholds.iter().all(|t| t.is_finite() && *t > 0.0), "{state:?}");
    ask(100);
    assert!(worst < 1.0, "the liar reached an answer: error {worst}");
    // Placed on another node every batch, a worker that lies in half of them stands out
    // over many: it is suspected, and its answers removed from every group.
    assert_eq!(coordinator.locator_state().suspected_workers, [1]);
    let stats = coordinator.shutdown();
    assert_eq!(stats.decoded_groups, 200);
    // About half the groups had the liar until it was suspected, every group after; nobody
    // else was removed more than a few times.
    assert!(stats.workers[1].located >= 60, "{stats:?}");
    assert!(stats.workers.iter().enumerate().all(|(w, s)| w == 1 || s.located <= 5), "{stats:?}");
}

#[test]
fn a_locator_that_does_not_learn_still_has_liars_suspected_over_many_batches_but_the_papers() {
    // K = 2, A = 1, S = 1, N = 6, nothing learnt (the robust locator, a fixed calibration):
    // worker 1 flips the sign of every answer. Its reputation over many batches suspects it;
    // the paper's locator is kept as published, with no reputation.
    let suspected = |locator: Locator| {
        let code = Code::new(CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
        let flip: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o.iter_mut().for_each(|v| *v = -*v));
        let workers = tampering_workers(6, &flip);
        let mut faults = vec![WorkerFaults::NONE; 6];
        faults[1].byzantine_probability = 1.0;
        let plan = FaultPlan { latency: Latency::Constant { ms: 1.0 }, workers: faults, random_slowdown: None };
        let config = CoordinatorConfig { locator, learning: None, ..config(code, Some(plan), 100, 5000) };
        let coordinator = Coordinator::start(config, workers).unwrap();
        for pair in 0..150 {
            for ticket in coordinator.submit_all(vec![query(2 * pair), query(2 * pair + 1)]).unwrap() {
                ticket.recv().unwrap().unwrap();
            }
        }
        // The learner thread judges on its own time.
        let started = std::time::Instant::now();
        while coordinator.locator_state().suspected_workers.is_empty() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        coordinator.locator_state().suspected_workers
    };
    assert_eq!(suspected(Locator::Robust), [1]);
    assert_eq!(suspected(Locator::Paper), Vec::<usize>::new());
}

#[test]
fn a_calibration_for_another_code_is_refused_at_start() {
    let code = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
    let other = Code::new(CodeParams::builder(2, 6).byzantine(1).build().unwrap()).unwrap();
    let mut builder = approxifer::kernels::CalibrationBuilder::new(&other, C, usize::MAX).unwrap();
    let answers: Vec<f32> = (0..200 * 6 * C).map(|i| ((i * 31 % 17) as f32).sin()).collect();
    builder.observe(&answers, &vec![true; 200 * 6]).unwrap();
    let locator = Locator::Calibrated(Arc::new(builder.fit(0.01).unwrap()));
    let config = CoordinatorConfig { locator, ..config(code, None, 100, 2000) };
    let err = Coordinator::start(config, workers(5, 100)).err().expect("refused");
    assert!(err.contains("N = 6") && err.contains("N = 5"), "{err}");
}

#[test]
fn a_non_finite_answer_is_erased_never_decoded() {
    // K = 2, N = 3, S = 1, A = 0: worker 1 answers NaN; its answer counts as no answer. Worker
    // 2 answers ten times later than the others (5 ms against 50), so worker 1's answer is
    // always among the first two: each group must wait for worker 2 (or a re-sent copy)
    // rather than decode from a NaN. With every worker equally fast, worker 1 could be last in
    // every group and its answers never looked at.
    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let nan: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o[0] = f32::NAN);
    let (worst, stats) = with_a_liar(code, nan, |plan| {
        plan.latency = Latency::Constant { ms: 5.0 };
        plan.workers[2].slowdown = 10.0;
    });
    assert!(worst.is_finite() && worst < 1.0, "error {worst}");
    assert_eq!(stats.non_finite_answers, stats.groups, "{stats:?}");
    assert_eq!(stats.located_workers, 0);
}

#[test]
fn a_non_finite_answer_is_re_sent_to_a_worker_that_answered_with_numbers() {
    // K = 2, N = 3, S = 0: every coded query is needed, and worker 1 always answers NaN. Only
    // a hedge of its coded queries to another worker can complete a group.
    let code = Code::new(CodeParams::builder(2, 3).build().unwrap()).unwrap();
    let mut faults = vec![WorkerFaults::NONE; 3];
    faults[1].byzantine_probability = 1.0;
    let plan = FaultPlan { latency: Latency::Constant { ms: 0.0 }, workers: faults, random_slowdown: None };
    let nan: approxifer::serve::Tamper = Arc::new(|o: &mut Vec<f32>| o[0] = f32::NAN);
    let run = |hedge_after: Option<Duration>| {
        let workers = tampering_workers(3, &nan);
        let config = CoordinatorConfig { hedge_after, ..config(code.clone(), Some(plan.clone()), 100, 300) };
        let coordinator = Coordinator::start(config, workers).unwrap();
        let tickets = coordinator.submit_all((0..4).map(query).collect()).unwrap();
        let results: Vec<_> = tickets.into_iter().map(|t| t.recv().unwrap()).collect();
        (results, coordinator.shutdown())
    };
    let (unhedged, _) = run(None);
    assert!(unhedged.iter().all(|r| matches!(r, Err(ServeError::DeadlineMissed { .. }))), "{unhedged:?}");
    let (hedged, stats) = run(Some(Duration::from_millis(10)));
    for (i, result) in hedged.iter().enumerate() {
        let answer = result.as_ref().expect("the hedge completes the group");
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}: {answer:?}");
    }
    assert!(stats.hedged_requests >= 1 && stats.non_finite_answers >= 2, "{stats:?}");
}

#[test]
fn a_second_straggler_costs_a_hedge_not_its_whole_delay() {
    // K = 2, N = 3, S = 1, and workers 0 and 1 both slow (100 ms): one more straggler than
    // the code absorbs. After the hedge delay, their coded queries go to worker 2, which has
    // answered and runs them at its own speed.
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 1.0 },
        workers: vec![WorkerFaults { slowdown: 100.0, ..WorkerFaults::NONE }; 2],
        random_slowdown: None,
    };
    let run = |hedge_after: Option<Duration>| {
        let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
        let config = CoordinatorConfig { hedge_after, ..config(code, Some(plan.clone()), 100, 2000) };
        let coordinator = Coordinator::start(config, workers(3, 100)).unwrap();
        let start = std::time::Instant::now();
        let tickets: Vec<_> = (0..2).map(|i| coordinator.submit(query(i)).unwrap()).collect();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let answer = ticket.recv().unwrap().unwrap();
            let error = max_error(&answer.output, &expected(&query(i)));
            assert!(error < 1.0, "query {i}: {error}");
        }
        (start.elapsed(), coordinator.shutdown().hedged_requests)
    };
    let (unhedged, none) = run(None);
    let (hedged, sent) = run(Some(Duration::from_millis(10)));
    assert!(unhedged >= Duration::from_millis(95) && none == 0, "{unhedged:?}, {none} hedges");
    // Both missing coded queries go to worker 2, the one that answered, in one request.
    assert!(hedged < Duration::from_millis(60) && sent == 1, "{hedged:?}, {sent} hedges");
}

#[test]
fn a_lagging_workers_coded_queries_go_with_the_next_batch_to_the_others() {
    // K = 4, N = 5, S = 1; worker 0 takes 2 s, worker 4 never answers, the others 10 ms. The
    // first batch has three answers of the four it needs and waits for its hedge (150 ms).
    // The second is sent while both are known to lag: their coded queries also go to workers
    // 1-3 (twice each, as they are idle), in the requests those get anyway, so it is answered
    // in about one service time instead of a hedge delay.
    let hung = WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE };
    let slow = WorkerFaults { slowdown: 200.0, ..WorkerFaults::NONE };
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 10.0 },
        workers: vec![slow, WorkerFaults::NONE, WorkerFaults::NONE, WorkerFaults::NONE, hung],
        random_slowdown: None,
    };
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(150)),
        trace_slower_than: Some(Duration::ZERO),
        ..config(code, Some(plan), 100, 5000)
    };
    let coordinator = Coordinator::start(config, workers(5, 100)).unwrap();
    let batch = |first: usize| {
        let start = std::time::Instant::now();
        let tickets = coordinator.submit_all((first..first + 4).map(query).collect()).unwrap();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let answer = ticket.recv().unwrap().unwrap();
            let error = max_error(&answer.output, &expected(&query(first + i)));
            assert!(error < 1.0, "query {}: {error}", first + i);
        }
        start.elapsed()
    };
    let first = batch(0);
    let second = batch(4);
    let stats = coordinator.shutdown();
    let traces: Vec<String> = stats.slow_batches.iter().map(ToString::to_string).collect();
    assert!(first >= Duration::from_millis(150), "{first:?}: three answers cannot decode it: {traces:?}");
    assert!(second < Duration::from_millis(100), "{second:?}: waited as if nobody had covered: {traces:?}");
    assert_eq!(stats.covered_parts, 4, "workers 0 and 4, each to two of the idle workers 1-3: {traces:?}");
    let second_trace = stats.slow_batches.iter().find(|trace| trace.batch == 1).expect("every batch is traced");
    let covered: Vec<usize> = second_trace
        .events
        .iter()
        .filter_map(|(_, event)| match event {
            approxifer::serve::BatchEvent::Covered { lagging, helper } if (1..4).contains(helper) => Some(*lagging),
            _ => None,
        })
        .collect();
    assert_eq!(covered, vec![0, 0, 4, 4], "{second_trace}");
}

#[test]
fn the_slowest_batches_timelines_say_what_they_waited_for() {
    use approxifer::serve::BatchEvent;
    // K = 2, N = 3, S = 1; workers 0 and 1 take 100 ms, worker 2 1 ms: the batch waits for its
    // hedge (10 ms) to worker 2.
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 1.0 },
        workers: vec![WorkerFaults { slowdown: 100.0, ..WorkerFaults::NONE }; 2],
        random_slowdown: None,
    };
    let run = |slower_than: Duration| {
        let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
        let config = CoordinatorConfig {
            hedge_after: Some(Duration::from_millis(10)),
            trace_slower_than: Some(slower_than),
            ..config(code, Some(plan.clone()), 100, 2000)
        };
        let coordinator = Coordinator::start(config, workers(3, 100)).unwrap();
        for ticket in coordinator.submit_all(vec![query(0), query(1)]).unwrap() {
            ticket.recv().unwrap().expect("answered");
        }
        coordinator.shutdown().slow_batches
    };
    let slow = run(Duration::from_millis(5));
    assert_eq!(slow.len(), 1, "{slow:?}");
    let trace = &slow[0];
    // (On a loaded machine worker 2 may answer after the hedge is due: it then waits for it.)
    let timeline: Vec<&(Duration, BatchEvent)> =
        trace.events.iter().filter(|(_, e)| *e != BatchEvent::HedgeWaiting).collect();
    let events: Vec<BatchEvent> = timeline.iter().map(|(_, e)| e.clone()).collect();
    let expected = [
        BatchEvent::Sent { workers: vec![0, 1, 2] },
        BatchEvent::Answered { worker: 2 },
        BatchEvent::Hedged { helpers: vec![2] },
        BatchEvent::Answered { worker: 2 },
        BatchEvent::Decoded,
    ];
    assert_eq!(events, expected, "{trace}");
    let times: Vec<Duration> = timeline.iter().map(|(at, _)| *at).collect();
    assert!(times.is_sorted() && times[2] >= Duration::from_millis(10), "{trace}");
    assert!(trace.took >= times[4] && trace.took < Duration::from_millis(100), "{trace}");
    assert_eq!((trace.queries, trace.hedge_after), (2, Some(Duration::from_millis(10))));
    assert!(run(Duration::from_secs(10)).is_empty(), "no batch took 10 s");
}

#[test]
fn a_due_hedge_waits_for_an_idle_helper_and_goes_the_moment_one_is() {
    // K = 2, N = 3, S = 1; every request takes 200 ms, on workers 0 and 1 2000 ms. Groups A
    // and B go out 60 ms apart. When A's hedge is due (260 ms) its one helper, worker 2, is
    // busy with B: a copy would only queue behind it. A's hedge goes when worker 2 answers B
    // (400 ms); B, which nobody had answered at its hedge time, follows when worker 2 answers
    // A's hedge (600 ms); both are answered by about 800 ms. Looking again a hedge period
    // later instead hedges A at 520 ms and B at 840 ms, answered at about 1040 ms. (Times are
    // long enough for a loaded CI machine's scheduling not to blur the two.)
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 200.0 },
        workers: vec![WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE }; 2],
        random_slowdown: None,
    };
    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(260)), ..config(code, Some(plan), 100, 6000) };
    let coordinator = Coordinator::start(config, workers(3, 100)).unwrap();
    let start = std::time::Instant::now();
    let first: Vec<_> = (0..2).map(|i| coordinator.submit(query(i)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(60));
    let second: Vec<_> = (2..4).map(|i| coordinator.submit(query(i)).unwrap()).collect();
    for (i, ticket) in first.into_iter().chain(second).enumerate() {
        let answer = ticket.recv().unwrap().unwrap();
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}");
    }
    let elapsed = start.elapsed();
    let stats = coordinator.shutdown();
    assert!(elapsed < Duration::from_millis(920), "{elapsed:?}: a hedge waited longer than for worker 2");
    assert_eq!(stats.hedged_requests, 2, "one hedge per group, each to the idle worker 2");
}

#[test]
fn a_hedges_copy_lost_with_its_helper_is_sent_again_to_another() {
    // K = 2, N = 4, S = 1: a group needs three answers. Workers 2 and 3 hang; worker 1 takes
    // 100 ms; worker 0 answers its first request in 10 ms, then crashes. At the hedge (30 ms)
    // worker 0 is the one helper, and both copies go to it and are lost. Worker 1 answers
    // (100 ms), a third answer is still missing, and the hedge goes again, to worker 1: the
    // group is answered at about 200 ms, where a batch hedged only once waited for its
    // deadline.
    let mut faults = vec![WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE }; 4];
    faults[0] = WorkerFaults { crash_after: Some(1), ..WorkerFaults::NONE };
    faults[1] = WorkerFaults { slowdown: 10.0, ..WorkerFaults::NONE };
    let plan = FaultPlan { latency: Latency::Constant { ms: 10.0 }, workers: faults, random_slowdown: None };
    let code = Code::new(CodeParams::builder(2, 4).stragglers(1).build().unwrap()).unwrap();
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(30)), ..config(code, Some(plan), 100, 3000) };
    let coordinator = Coordinator::start(config, workers(4, 100)).unwrap();
    let start = std::time::Instant::now();
    for (i, ticket) in coordinator.submit_all(vec![query(0), query(1)]).unwrap().into_iter().enumerate() {
        let answer = ticket.recv().unwrap().expect("answered before the deadline");
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}");
    }
    let elapsed = start.elapsed();
    let stats = coordinator.shutdown();
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert_eq!(stats.hedged_requests, 2, "a copy to worker 0, then one to worker 1: {stats:?}");
}

#[test]
fn a_hedge_skips_a_helper_lagging_on_a_request_nobody_needs() {
    use approxifer::serve::BatchEvent;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // K = 4, N = 5, S = 1. Batch B: workers 0 and 1 answer, 2-4 answer NaN; it needs two more
    // answers. Batch C, 50 ms later: worker 0 takes 2 s on it, 1-4 answer, so C is decoded
    // without worker 0, which runs on. When B's hedge is due (400 ms) both 0 and 1 answered B
    // and neither has a request of a pending batch, but worker 0 has been on one for 350 ms
    // (lagging from 300): the copies must all go to worker 1, not queue behind its 2 s.
    let is_warm_up = |x: &Tensor<2>| x.clone().abs().sum().into_scalar::<f32>() == 0.0;
    let scripted = |i: usize| -> Arc<dyn Worker> {
        let (f, calls) = (model(), AtomicUsize::new(0));
        let script: ServedModel = Arc::new(move |x: Tensor<2>| {
            if is_warm_up(&x) {
                return f.forward(x);
            }
            let output = f.forward(x);
            match (i, calls.fetch_add(1, Ordering::SeqCst)) {
                // Not a number: no answer, but not a failure that makes the hedge due at once.
                (2..=4, 0) => output.mul_scalar(f32::NAN),
                (0, 1) => {
                    std::thread::sleep(Duration::from_secs(2));
                    output
                }
                _ => output,
            }
        });
        Arc::new(worker(i, script, 100))
    };
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(400)),
        trace_slower_than: Some(Duration::ZERO),
        ..config(code, None, 100, 10_000)
    };
    let coordinator = Coordinator::start(config, (0..5).map(scripted).collect()).unwrap();
    let start = std::time::Instant::now();
    let b = coordinator.submit_all((0..4).map(query).collect()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let c = coordinator.submit_all((4..8).map(query).collect()).unwrap();
    for (i, ticket) in b.into_iter().chain(c).enumerate() {
        let answer = ticket.recv().unwrap().unwrap();
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}");
    }
    let elapsed = start.elapsed();
    let stats = coordinator.shutdown();
    let traces: Vec<String> = stats.slow_batches.iter().map(ToString::to_string).collect();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}: B waited for worker 0: {traces:?}");
    let first = stats.slow_batches.iter().find(|trace| trace.batch == 0).expect("every batch is traced");
    let hedged: Vec<&Vec<usize>> = first
        .events
        .iter()
        .filter_map(|(_, event)| match event {
            BatchEvent::Hedged { helpers } => Some(helpers),
            _ => None,
        })
        .collect();
    assert_eq!(hedged, vec![&vec![1]], "{first}");
}

#[test]
fn the_hedge_delay_follows_the_batches_completion_times() {
    // K = 2, N = 3, S = 1; workers take 10, 20 and 60 ms: every group is decodable at 20 ms
    // from workers 0 and 1. With a 5 ms hedge delay each group would send worker 0 (idle from
    // 10 ms) a hedge it does not need; once the coordinator has seen HEDGE_HISTORY groups
    // complete in 20 ms, it waits longer than that before hedging.
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 10.0 },
        workers: vec![
            WorkerFaults::NONE,
            WorkerFaults { slowdown: 2.0, ..WorkerFaults::NONE },
            WorkerFaults { slowdown: 6.0, ..WorkerFaults::NONE },
        ],
        random_slowdown: None,
    };
    let code = Code::new(CodeParams::builder(2, 3).stragglers(1).build().unwrap()).unwrap();
    let config =
        CoordinatorConfig { hedge_after: Some(Duration::from_millis(5)), ..config(code, Some(plan), 100, 2000) };
    let coordinator = Coordinator::start(config, workers(3, 100)).unwrap();
    let groups = 3 * approxifer::serve::HEDGE_HISTORY;
    for g in 0..groups {
        let tickets: Vec<_> = (0..2).map(|i| coordinator.submit(query(2 * g + i)).unwrap()).collect();
        for ticket in tickets {
            ticket.recv().unwrap().expect("decoded");
        }
    }
    let hedged = coordinator.shutdown().hedged_requests as usize;
    // One hedge per group while the history fills (the fixed delay's behaviour), then few.
    assert!(hedged >= approxifer::serve::HEDGE_HISTORY / 2, "{hedged}: the 5 ms delay should hedge at first");
    assert!(hedged <= approxifer::serve::HEDGE_HISTORY + 8, "{hedged} hedges for {groups} groups");
}

/// Workers 1 and 4 of N = 6 never answer: every group decodes from the other four, so runs
/// that batch differently decode from the same responders.
fn two_hung_of_six() -> FaultPlan {
    let hung = WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE };
    FaultPlan {
        latency: Latency::Constant { ms: 0.0 },
        workers: vec![WorkerFaults::NONE, hung, WorkerFaults::NONE, WorkerFaults::NONE, hung],
        random_slowdown: None,
    }
}

/// Every scheme's settings for the scheme tests: `K = 4`, no faults, no hedging.
fn scheme_settings(stragglers: usize, max_batch: usize) -> approxifer::serve::SchemeConfig {
    approxifer::serve::SchemeConfig {
        k: 4,
        stragglers,
        byzantine: 0,
        locator: Locator::Robust,
        partial_calibrations: Vec::new(),
        learning: None,
        privacy: Default::default(),
        copies: 2,
        hedge_after: Duration::from_secs(1),
        coded_hedge_after: None,
        input_len: D,
        output_len: C,
        max_batch,
        max_queue_delay: Duration::from_millis(50),
        coded_queue_delay: None,
        decode_grace: approxifer::serve::DEFAULT_DECODE_GRACE,
        deadline: Duration::from_secs(5),
        capacity: 1000,
        faults: None,
        codec: Codec::Cpu,
        trace_slower_than: None,
    }
}

#[test]
fn batched_answers_equal_group_at_a_time_answers_for_every_scheme() {
    use approxifer::serve::{SchemeConfig, SchemeKind};
    let settings = |max_batch: usize, faults: Option<FaultPlan>| SchemeConfig {
        faults: faults.map(|plan| (plan, 3)),
        ..scheme_settings(2, max_batch)
    };
    for kind in [SchemeKind::Uncoded, SchemeKind::Replication, SchemeKind::Hedged, SchemeKind::Approxifer] {
        let faults = (kind == SchemeKind::Approxifer).then(two_hung_of_six);
        let run = |max_batch: usize| -> Vec<Vec<f32>> {
            let config = settings(max_batch, faults.clone());
            let scheme = kind.start(&config, workers(kind.workers(&config), 1000)).unwrap();
            // Whole groups of 4 at a time: with max_batch 1 each is its own batch; with 8,
            // the 40 queries go in batches of up to 8 groups.
            let tickets: Vec<_> = if max_batch == 1 {
                (0..10)
                    .flat_map(|g| {
                        let tickets = scheme.submit_all((0..4).map(|i| query(4 * g + i)).collect()).unwrap();
                        tickets.into_iter().map(|t| t.recv().unwrap()).collect::<Vec<_>>()
                    })
                    .collect()
            } else {
                let tickets = scheme.submit_all((0..40).map(query).collect()).unwrap();
                tickets.into_iter().map(|t| t.recv().unwrap()).collect()
            };
            let stats = scheme.shutdown();
            assert!(max_batch == 1 || stats.batches < 10, "{kind:?}: batching formed {} batches", stats.batches);
            tickets.into_iter().map(|r| r.expect("answered").output).collect()
        };
        let (one, batched) = (run(1), run(8));
        for (i, (a, b)) in one.iter().zip(&batched).enumerate() {
            assert!(max_error(a, b) < 1e-5, "{kind:?} query {i}: {a:?} vs {b:?}");
            if kind != SchemeKind::Approxifer {
                assert!(max_error(a, &expected(&query(i))) < 1e-5, "{kind:?} query {i}: the model's own answer");
            }
        }
    }
}

#[test]
fn the_coded_queue_delay_gathers_fuller_batches_for_the_coded_schemes_only() {
    use approxifer::serve::{SchemeConfig, SchemeKind};
    // Baselines send each query at once; the coded scheme waits 300 ms for more.
    let config = SchemeConfig {
        max_queue_delay: Duration::ZERO,
        coded_queue_delay: Some(Duration::from_millis(300)),
        capacity: 100,
        ..scheme_settings(1, 8)
    };
    for (kind, batches) in [(SchemeKind::Uncoded, 3), (SchemeKind::Approxifer, 1)] {
        assert_eq!(kind.queue_delay(&config).as_millis(), if batches == 1 { 300 } else { 0 });
        let scheme = kind.start(&config, workers(kind.workers(&config), 100)).unwrap();
        let tickets: Vec<_> = (0..3)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(20));
                scheme.submit(query(i)).unwrap()
            })
            .collect();
        for ticket in tickets {
            ticket.recv().unwrap().expect("answered");
        }
        assert_eq!(scheme.shutdown().batches, batches, "{kind:?}");
    }
}

#[test]
fn coded_queries_formed_on_a_wgpu_device_answer_as_those_formed_by_the_cpu() {
    use approxifer::backend::BurnDevice;
    use approxifer::kernels::gpu::AdapterChoice;
    let gpu = BurnDevice::select(&AdapterChoice::from_env())
        .unwrap_or_else(|e| panic!("{e} (scripts/setup.sh installs lavapipe; CI needs an adapter)"));
    let answers = |device: &Device| -> Vec<Vec<f32>> {
        let workers: Vec<Arc<dyn Worker>> =
            (0..6).map(|i| Arc::new(LocalWorker::start(i, model(), device.clone(), 100)) as Arc<dyn Worker>).collect();
        let code = Code::new(CodeParams::builder(4, 6).stragglers(2).build().unwrap()).unwrap();
        // 11 queries: two full groups and a partial one of 3, in one batch.
        let config = CoordinatorConfig {
            max_queue_delay: Duration::from_millis(50),
            ..config(code, Some(two_hung_of_six()), 100, 5000)
        };
        let coordinator = Coordinator::start(config, workers).unwrap();
        let tickets = coordinator.submit_all((0..11).map(query).collect()).unwrap();
        let outputs = tickets.into_iter().map(|t| t.recv().unwrap().expect("decoded").output).collect();
        assert_eq!(coordinator.shutdown().batches, 1);
        outputs
    };
    let (on_cpu, on_gpu) = (answers(&Device::flex()), answers(&gpu.device));
    for (i, (c, g)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        assert!(max_error(c, g) < 1e-4, "query {i}: cpu-formed {c:?} vs device-formed {g:?}");
    }
}

#[test]
fn a_partial_group_is_coded_for_its_own_k_not_padded() {
    // K = 4, S = 1: five queries are one full group and one of K' = 1, which a code for one
    // query sends unmixed to N' = 2 workers: its answer is the model's own, not a decode.
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let config = CoordinatorConfig { max_queue_delay: Duration::from_millis(200), ..config(code, None, 100, 2000) };
    let coordinator = Coordinator::start(config, workers(5, 100)).unwrap();
    let tickets = coordinator.submit_all((0..5).map(query).collect()).unwrap();
    let answers: Vec<_> = tickets.into_iter().map(|t| t.recv().unwrap().expect("decoded")).collect();
    let stats = coordinator.shutdown();
    assert_eq!((stats.batches, stats.groups, stats.decoded_groups), (1, 2, 2), "{stats:?}");
    let last = &answers[4];
    assert!(!last.approximate && max_error(&last.output, &expected(&query(4))) < 1e-5, "{last:?}");
    for (i, answer) in answers[..4].iter().enumerate() {
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}: {answer:?}");
    }
}

#[test]
fn a_partial_group_of_a_code_with_liars_is_coded_for_its_own_k() {
    // K = 4, A = 1, S = 1: N = 10. Five queries are a full group and one of K' = 1, coded for
    // one query (N' = 4, each coded query the query itself): its answer is the model's own, not
    // a decode of the full code's (padded to K, it took a row from each of the ten workers).
    let code = Code::new(CodeParams::builder(4, 10).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let config = CoordinatorConfig { max_queue_delay: Duration::from_millis(200), ..config(code, None, 100, 2000) };
    let coordinator = Coordinator::start(config, workers(10, 100)).unwrap();
    let tickets = coordinator.submit_all((0..5).map(query).collect()).unwrap();
    let answers: Vec<_> = tickets.into_iter().map(|t| t.recv().unwrap().expect("decoded")).collect();
    let stats = coordinator.shutdown();
    assert_eq!((stats.batches, stats.groups, stats.decoded_groups, stats.answered), (1, 2, 2, 5), "{stats:?}");
    let last = &answers[4];
    assert!(!last.approximate && max_error(&last.output, &expected(&query(4))) < 1e-5, "{last:?}");
    for (i, answer) in answers[..4].iter().enumerate() {
        assert!(max_error(&answer.output, &expected(&query(i))) < 1.0, "query {i}: {answer:?}");
    }
}

#[test]
fn a_worker_that_dies_mid_run_loses_no_query() {
    // Worker 2 of K = 4, N = 5 crashes after its third batch; S = 1 absorbs it from then on.
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let plan = FaultPlan {
        latency: Latency::Constant { ms: 1.0 },
        workers: vec![
            WorkerFaults::NONE,
            WorkerFaults::NONE,
            WorkerFaults { crash_after: Some(3), ..WorkerFaults::NONE },
        ],
        random_slowdown: None,
    };
    let coordinator = Coordinator::start(config(code, Some(plan), 1000, 2000), workers(5, 1000)).unwrap();
    let mut answered = 0;
    for round in 0..10 {
        let tickets = coordinator.submit_all((0..13).map(|i| query(13 * round + i)).collect()).unwrap();
        answered += tickets.into_iter().filter(|t| t.recv().unwrap().is_ok()).count();
    }
    let stats = coordinator.shutdown();
    assert_eq!(answered, 130);
    assert_eq!((stats.answered, stats.errors), (130, 0), "{stats:?}");
}

#[test]
fn every_worker_runs_each_range_of_batch_sizes_before_the_first_query() {
    use approxifer::serve::{Baseline, BaselineConfig, Policy};
    // A device compiles kernels per range of batch sizes and per worker thread (13 s for the
    // first batch of 10 on lavapipe): schemes pay that at start, not within a deadline.
    let local = || -> Vec<Arc<LocalWorker>> { (0..5).map(|i| Arc::new(worker(i, model(), 100))).collect() };
    let shared = |local: &[Arc<LocalWorker>]| local.iter().map(|w| w.clone() as Arc<dyn Worker>).collect::<Vec<_>>();
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let coded = local();
    let coordinator = Coordinator::start(config(code, None, 100, 2000), shared(&coded)).unwrap();
    assert!(coded.iter().all(|w| w.busy() > Duration::ZERO), "every coded worker warmed up");
    let stats = coordinator.shutdown();
    assert_eq!((stats.batches, stats.answered), (0, 0), "warm-up batches are not the workload's");
    let plain = local();
    let config = BaselineConfig {
        policy: Policy::Uncoded,
        input_len: D,
        output_len: C,
        max_batch: 8,
        max_queue_delay: Duration::ZERO,
        deadline: Duration::from_secs(1),
        capacity: 100,
        faults: None,
    };
    let baseline = Baseline::start(config, shared(&plain)).unwrap();
    assert!(plain.iter().all(|w| w.busy() > Duration::ZERO), "every uncoded worker warmed up");
    assert_eq!(baseline.shutdown().batches, 0);
}

/// A linear map without bias, `C x D`: its output on a sum of queries is the sum of its
/// outputs, so the same map is an exact parity model and ParM's rebuilt answers are exact.
fn linear() -> ServedModel {
    Arc::new(|x: Tensor<2>| {
        let [_, d] = x.dims();
        let weights: Vec<f32> = (0..d * C).map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5).collect();
        let weights = Tensor::<2>::from_data(burn::tensor::TensorData::new(weights, [d, C]), &x.device());
        x.matmul(weights)
    })
}

fn softmax_of_linear(query: &[f32]) -> Vec<f32> {
    let logits: Vec<f32> = (0..C)
        .map(|c| query.iter().enumerate().map(|(i, v)| v * ((((i * C + c) * 5) % 11) as f32 / 11.0 - 0.5)).sum())
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| (l - max).exp() / sum).collect()
}

#[test]
fn parm_rebuilds_one_missing_answer_per_group_and_waits_on_two() {
    use approxifer::serve::parm::{Parm, ParmConfig};
    let k = 3;
    let hung = WorkerFaults { hang_probability: 1.0, ..WorkerFaults::NONE };
    let run = |faults: Vec<WorkerFaults>, queries: usize| {
        let config = ParmConfig {
            k,
            input_len: D,
            output_len: C,
            max_batch: 8,
            max_queue_delay: Duration::from_millis(2),
            deadline: Duration::from_millis(300),
            capacity: 1000,
            faults: Some((
                FaultPlan { latency: Latency::Constant { ms: 0.2 }, workers: faults, random_slowdown: None },
                3,
            )),
        };
        let workers = (0..=k).map(|i| Arc::new(worker(i, linear(), 1000)) as Arc<dyn Worker>).collect();
        let parm = Parm::start(config, workers).unwrap();
        // A count that leaves the last group short: it is padded, and protected too.
        let tickets: Vec<_> = (0..queries).map(|i| parm.submit(query(i)).unwrap()).collect();
        let results: Vec<_> = tickets
            .into_iter()
            .map(|t| t.recv_timeout(Duration::from_secs(5)).expect("every query is answered"))
            .collect();
        (results, parm.shutdown())
    };
    // Data worker 1 never answers: member 1 of every group is rebuilt, exactly (the model is
    // linear); the others are the model's own answers.
    let (results, stats) = run(vec![WorkerFaults::NONE, hung], 50);
    for (i, result) in results.iter().enumerate() {
        let answer = result.as_ref().unwrap_or_else(|e| panic!("query {i}: {e}"));
        let error = max_error(&answer.output, &softmax_of_linear(&query(i)));
        assert!(error < 1e-5, "query {i}: {error}, {:?} against {:?}", answer.output, softmax_of_linear(&query(i)));
        assert_eq!(answer.approximate, i % k == 1, "query {i}");
    }
    assert_eq!((stats.answered, stats.errors), (50, 0));
    // Per worker: every worker got each batch; the hung one answered none of them.
    let requests = stats.workers[0].requests;
    assert!(requests > 0 && stats.workers.iter().all(|w| w.requests == requests), "{:?}", stats.workers);
    let answers: Vec<u64> = stats.workers.iter().map(|w| w.answers).collect();
    assert_eq!(answers, [requests, 0, requests, requests]);
    // The parity worker down as well: the groups' member 1 cannot be rebuilt and misses its
    // deadline; every other query is answered.
    let (results, stats) = run(vec![WorkerFaults::NONE, hung, WorkerFaults::NONE, hung], 30);
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(answer) => assert!(i % k != 1 && !answer.approximate, "query {i}"),
            Err(ServeError::DeadlineMissed { .. }) => assert_eq!(i % k, 1, "query {i}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((stats.answered, stats.errors), (20, 10));
}

/// Each worker records the inputs it is given (host copies), then runs the test model.
fn recording_workers(n: usize, seen: &Arc<std::sync::Mutex<Vec<Vec<f32>>>>) -> Vec<Arc<dyn Worker>> {
    (0..n)
        .map(|i| {
            let seen = seen.clone();
            let inner = model();
            let recording: ServedModel = Arc::new(move |x: Tensor<2>| {
                let rows = x.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                seen.lock().unwrap().extend(rows.chunks(D).map(<[f32]>::to_vec));
                inner.forward(x)
            });
            Arc::new(worker(i, recording, 100)) as Arc<dyn Worker>
        })
        .collect()
}

#[test]
fn a_private_code_sends_no_worker_a_query_unmasked_and_draws_fresh_masks_per_batch() {
    use approxifer::kernels::MaskPlacement;
    let run = |seen: &Arc<std::sync::Mutex<Vec<Vec<f32>>>>| {
        let params = CodeParams::builder(4, 6).stragglers(1).privacy(1).masks(MaskPlacement::Interleaved);
        let code = Code::with_masked_workers(params).unwrap();
        let n = code.params().workers();
        let config = CoordinatorConfig {
            max_queue_delay: Duration::from_millis(200),
            mask_sigma: 0.5,
            trace_slower_than: None,
            ..config(code, None, 100, 5000)
        };
        let coordinator = Coordinator::start(config, recording_workers(n, seen)).unwrap();
        seen.lock().unwrap().clear(); // the warm-up's zero queries
        // Two full groups and a partial one of K' = 1, which a code without masks would send
        // unmixed.
        let tickets = coordinator.submit_all((0..9).map(query).collect()).unwrap();
        let answers: Vec<_> = tickets.into_iter().map(|t| t.recv().unwrap().expect("decoded")).collect();
        assert_eq!(coordinator.shutdown().batches, 1);
        answers
    };
    let (first, second) = (Arc::new(std::sync::Mutex::new(Vec::new())), Arc::new(std::sync::Mutex::new(Vec::new())));
    let answers = run(&first);
    run(&second);
    let (first, second) = (first.lock().unwrap().clone(), second.lock().unwrap().clone());
    // N = 6 workers, two rows each, and three for the partial group; a group decodes from
    // N - S answers, and work not started by then is cancelled: at least 5 * 2 + 2 rows.
    assert!(first.len() >= 5 * 2 + 2, "{} coded queries seen", first.len());
    for (i, answer) in answers.iter().enumerate() {
        assert!(answer.approximate, "query {i} was answered from an unmasked query");
        assert!(max_error(&answer.output, &expected(&query(i))) < 2.0, "query {i}: {answer:?}");
    }
    // Unmasked, the partial group's query would reach a worker as it is (a difference of 0).
    // Not a tighter bound: a worker whose node is next to a query's holds mostly that query
    // plus a small share of a random mask, and with six values per query that share is below
    // 0.05 in every value in one run of 30 to 60 here (the least distance seen: 0.04).
    for row in &first {
        let nearest = (0..9).map(|i| max_error(row, &query(i))).fold(f32::INFINITY, f32::min);
        assert!(nearest > 1e-3, "a worker saw a query unmasked: {row:?}");
    }
    // The same queries again: every coded query differs, the masks being fresh.
    for row in &second {
        assert!(first.iter().all(|seen| max_error(row, seen) > 1e-3), "a coded query repeated: {row:?}");
    }
}

#[test]
fn a_private_codes_coded_queries_are_never_re_sent_to_a_worker_that_saw_another() {
    use approxifer::kernels::MaskPlacement;
    // K = 4, S = 1, T = 1: N = 6, and workers 1 and 4 never answer, one more than the code
    // absorbs. A hedge (or a cover) would show a worker that answered a second coded query of
    // the group: two of its coded queries, a coalition of two against a code built for one.
    // The group waits for its deadline instead.
    let params = CodeParams::builder(4, 6).stragglers(1).privacy(1).masks(MaskPlacement::Interleaved);
    let code = Code::with_masked_workers(params).unwrap();
    let n = code.params().workers();
    let rows_seen: Arc<Vec<std::sync::atomic::AtomicUsize>> = Arc::new((0..n).map(|_| Default::default()).collect());
    let workers: Vec<Arc<dyn Worker>> = (0..n)
        .map(|i| {
            let (rows_seen, inner) = (rows_seen.clone(), model());
            let counting: ServedModel = Arc::new(move |x: Tensor<2>| {
                rows_seen[i].fetch_add(x.dims()[0], std::sync::atomic::Ordering::Relaxed);
                inner.forward(x)
            });
            Arc::new(worker(i, counting, 100)) as Arc<dyn Worker>
        })
        .collect();
    let config = CoordinatorConfig {
        hedge_after: Some(Duration::from_millis(10)),
        trace_slower_than: None,
        ..config(code, Some(two_hung_of_six()), 100, 600)
    };
    let coordinator = Coordinator::start(config, workers).unwrap();
    let warm_up: Vec<usize> = rows_seen.iter().map(|r| r.swap(0, std::sync::atomic::Ordering::Relaxed)).collect();
    assert!(warm_up.iter().all(|&rows| rows > 0), "every worker warms up: {warm_up:?}");
    for round in 0..3 {
        let tickets = coordinator.submit_all((4 * round..4 * round + 4).map(query).collect()).unwrap();
        for ticket in tickets {
            let result = ticket.recv().unwrap();
            assert!(matches!(result, Err(ServeError::DeadlineMissed { answered: 4, needed: 5, .. })), "{result:?}");
        }
    }
    let stats = coordinator.shutdown();
    let seen: Vec<usize> = rows_seen.iter().map(|r| r.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert_eq!(seen, vec![3, 0, 3, 3, 0, 3], "one coded query per group and worker");
    assert_eq!((stats.hedged_requests, stats.covered_parts), (0, 0), "{stats:?}");
}

#[test]
fn a_decodable_batch_waits_a_grace_for_its_last_answer_but_not_for_a_straggler() {
    use approxifer::serve::BatchEvent;
    // K = 4, N = 5, S = 1, every answer after 100 ms, worker 4's later: 110 ms (a batch's
    // spread) or 300 ms (a straggler). With a grace of a quarter of the median completion
    // (about 25 ms once a batch has completed) the first is waited for, and the group decoded
    // from all five; the second is not, and the batch decoded at about 125 ms from four.
    let code = Code::new(CodeParams::builder(4, 5).stragglers(1).build().unwrap()).unwrap();
    let run = |slowdown: f64, decode_grace: f64| {
        let mut faults = vec![WorkerFaults::NONE; 5];
        faults[4] = WorkerFaults { slowdown, ..WorkerFaults::NONE };
        let plan = FaultPlan { latency: Latency::Constant { ms: 100.0 }, workers: faults, random_slowdown: None };
        let config = CoordinatorConfig {
            max_queue_delay: Duration::from_secs(1),
            trace_slower_than: Some(Duration::ZERO),
            decode_grace,
            ..config(code.clone(), Some(plan), 100, 5000)
        };
        let coordinator = Coordinator::start(config, workers(5, 100)).unwrap();
        for round in 0..4 {
            let tickets = coordinator.submit_all((4 * round..4 * round + 4).map(query).collect()).unwrap();
            tickets.into_iter().for_each(|t| drop(t.recv().unwrap().expect("answered")));
        }
        // Per batch after the first (the first has no completion time to size a grace),
        // whether worker 4 answered before it was decoded, and how long it took.
        let stats = coordinator.shutdown();
        let mut traces = stats.slow_batches;
        traces.sort_by_key(|t| t.batch);
        let waited = |t: &approxifer::serve::BatchTrace| {
            let at = |wanted: &dyn Fn(&BatchEvent) -> bool| t.events.iter().position(|(_, e)| wanted(e));
            let four = at(&|e| matches!(e, BatchEvent::Answered { worker: 4 }));
            four.is_some_and(|four| four < at(&|e| matches!(e, BatchEvent::Decoded)).unwrap())
        };
        (traces[1..].iter().map(|t| (waited(t), t.took)).collect::<Vec<_>>(), stats.grace_expired)
    };
    let (spread, expired) = run(1.1, 0.25);
    assert!(spread.iter().all(|&(waited, _)| waited) && expired == 0, "{spread:?}, {expired} expired");
    let (at_once, expired) = run(1.1, 0.0);
    assert!(at_once.iter().all(|&(waited, _)| !waited) && expired == 0, "{at_once:?}, {expired} expired");
    let (straggler, expired) = run(3.0, 0.25);
    assert!(straggler.iter().all(|&(waited, took)| !waited && took < Duration::from_millis(250)), "{straggler:?}");
    assert_eq!(expired, 3, "every batch after the first waited its grace out");
}
