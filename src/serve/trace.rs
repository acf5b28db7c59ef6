//! Timelines of slow batches: what a coded batch waited for (which workers answered when, when
//! its hedge was due and where it went), kept for the slowest few when asked
//! ([`CoordinatorConfig::trace_slower_than`](super::CoordinatorConfig::trace_slower_than)).
//! A tail statistic is a handful of batches; their timelines say why.

use std::fmt;
use std::time::Duration;

/// How many of the slowest batches a coordinator keeps.
pub const SLOW_BATCHES_KEPT: usize = 20;

/// Something that happened to a batch, at a time after its dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchEvent {
    /// Its requests went to these workers.
    Sent {
        workers: Vec<usize>,
    },
    /// A lagging worker's coded queries went also to this helper, in its request.
    Covered {
        lagging: usize,
        helper: usize,
    },
    /// A worker answered (numbers or not).
    Answered {
        worker: usize,
    },
    /// A worker said it could not answer, leaving the batch short of what its code spares:
    /// its hedge is due at once.
    Failed {
        worker: usize,
    },
    /// Its hedge was due, and no worker that had answered it was free to take it.
    HedgeWaiting,
    /// Its unanswered coded queries went to these workers.
    Hedged {
        helpers: Vec<usize>,
    },
    Decoded,
    /// Its deadline passed first.
    Expired,
}

/// One batch's timeline, from dispatch to decoding or expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchTrace {
    /// The coordinator's batch number, in dispatch order.
    pub batch: u64,
    /// Queries in the batch.
    pub queries: usize,
    /// When it was to be hedged, after dispatch (`None`: hedging off).
    pub hedge_after: Option<Duration>,
    /// Dispatch to decoding or expiry.
    pub took: Duration,
    /// In order, each with its time after dispatch.
    pub events: Vec<(Duration, BatchEvent)>,
}

impl fmt::Display for BatchTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let list = |workers: &[usize]| workers.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        write!(f, "batch {} ({} queries) took {:.1} ms", self.batch, self.queries, ms(self.took))?;
        if let Some(after) = self.hedge_after {
            write!(f, ", hedge due at {:.1}", ms(after))?;
        }
        write!(f, ":")?;
        for (at, event) in &self.events {
            write!(f, " {:.1} ", ms(*at))?;
            match event {
                BatchEvent::Sent { workers } => write!(f, "sent to {}", list(workers))?,
                BatchEvent::Covered { lagging, helper } => write!(f, "w{lagging}'s rows also to w{helper}")?,
                BatchEvent::Answered { worker } => write!(f, "w{worker}")?,
                BatchEvent::Failed { worker } => write!(f, "w{worker} failed, hedge due")?,
                BatchEvent::HedgeWaiting => write!(f, "hedge waits for a free helper")?,
                BatchEvent::Hedged { helpers } => write!(f, "hedged to {}", list(helpers))?,
                BatchEvent::Decoded => write!(f, "decoded")?,
                BatchEvent::Expired => write!(f, "expired")?,
            }
            write!(f, ";")?;
        }
        Ok(())
    }
}

/// The slowest batches seen, at most [`SLOW_BATCHES_KEPT`], slowest first.
pub(crate) fn keep_slowest(slowest: &mut Vec<BatchTrace>, trace: BatchTrace) {
    let at = slowest.partition_point(|kept| kept.took >= trace.took);
    if at < SLOW_BATCHES_KEPT {
        slowest.insert(at, trace);
        slowest.truncate(SLOW_BATCHES_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(batch: u64, took_ms: u64) -> BatchTrace {
        BatchTrace { batch, queries: 4, hedge_after: None, took: Duration::from_millis(took_ms), events: Vec::new() }
    }

    #[test]
    fn the_slowest_batches_are_kept_slowest_first_and_no_more() {
        let mut slowest = Vec::new();
        for (batch, took) in (0..100).map(|b| (b, (b * 37) % 101)) {
            keep_slowest(&mut slowest, trace(batch, took));
        }
        let took: Vec<u64> = slowest.iter().map(|t| t.took.as_millis() as u64).collect();
        let mut expected: Vec<u64> = (0..100).map(|b| (b * 37) % 101).collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        expected.truncate(SLOW_BATCHES_KEPT);
        assert_eq!(took, expected);
    }

    #[test]
    fn a_timeline_reads_in_milliseconds_after_dispatch() {
        let ms = Duration::from_millis;
        let trace = BatchTrace {
            batch: 7,
            queries: 8,
            hedge_after: Some(ms(20)),
            took: ms(31),
            events: vec![
                (ms(0), BatchEvent::Sent { workers: vec![0, 1, 2] }),
                (ms(0), BatchEvent::Covered { lagging: 0, helper: 2 }),
                (ms(6), BatchEvent::Answered { worker: 2 }),
                (ms(20), BatchEvent::HedgeWaiting),
                (ms(24), BatchEvent::Hedged { helpers: vec![2] }),
                (ms(31), BatchEvent::Answered { worker: 2 }),
                (ms(31), BatchEvent::Decoded),
            ],
        };
        assert_eq!(
            trace.to_string(),
            "batch 7 (8 queries) took 31.0 ms, hedge due at 20.0: 0.0 sent to 0,1,2; 0.0 w0's rows also to w2; \
             6.0 w2; 20.0 hedge waits for a free helper; 24.0 hedged to 2; 31.0 w2; 31.0 decoded;"
        );
    }
}
