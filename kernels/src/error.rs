//! The one error type of the codec. Every variant carries the numbers involved and its
//! message states the violated condition, so a user can fix the input from the message alone.

use crate::family::NodeFamily;

/// Everything that can be wrong with the parameters, responder sets or buffers given to the
/// codec. Nothing in this crate panics on user data; it returns one of these instead.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// `K = 0`: a group must hold at least one query.
    #[error("K >= 1 violated: a group must hold at least one query (K = 0)")]
    NoQueries,

    /// More workers than the codec's node tables are sized for.
    #[error("N <= {max} violated: N = {workers} workers is more than the codec supports")]
    TooManyWorkers { workers: usize, max: usize },

    /// `N < K + S`: not enough workers to lose `S` and still hear from `K`.
    #[error(
        "N >= K + S violated: N = {workers} < K + S = {queries} + {stragglers} = {}",
        queries.saturating_add(*stragglers)
    )]
    TooFewWorkers { workers: usize, queries: usize, stragglers: usize },

    /// `N < 2K + 2A + S - 1` with `A > 0`: the Byzantine locator needs that many workers.
    #[error(
        "N >= 2K + 2A + S - 1 violated: N = {workers} < 2*{queries} + 2*{byzantine} + {stragglers} - 1 = {}",
        (2 * queries + stragglers).saturating_add(byzantine.saturating_mul(2)) - 1
    )]
    TooFewWorkersForByzantine { workers: usize, queries: usize, byzantine: usize, stragglers: usize },

    /// A private code with too few workers: its interpolant has `K + T` data nodes, so it needs
    /// `K + T + S` workers, or `2(K + T) + 2A + S - 1` with `A > 0`.
    #[error(
        "N >= {} violated for privacy T = {privacy}: N = {workers} workers cannot carry K = {queries} queries and {privacy} masks (S = {stragglers}, A = {byzantine})",
        needed
    )]
    TooFewWorkersForPrivacy {
        workers: usize,
        needed: usize,
        queries: usize,
        privacy: usize,
        stragglers: usize,
        byzantine: usize,
    },

    /// Masks asked for with the systematic layout, which hands raw queries to workers.
    #[error("privacy T = {privacy} needs the non-systematic layout: the systematic one sends raw queries to K workers")]
    PrivacyNeedsMixing { privacy: usize },

    /// A worker node coincides with a query's data node, so that worker would receive the
    /// query unmasked.
    #[error(
        "worker {worker}'s node coincides with query {query}'s node: it would receive the query unmasked; choose another N or worker node family"
    )]
    UnmaskedWorker { worker: usize, query: usize },

    /// An encoder of a private code called without masks, or masks for a code without
    /// privacy.
    #[error("the code mixes T = {privacy} masks per group; {what}")]
    MasksMismatch { privacy: usize, what: &'static str },

    /// A coalition size that is not between one worker and all of them.
    #[error("colluders must be between 1 and N = {workers}, got {colluders}")]
    InvalidColluders { colluders: usize, workers: usize },

    /// A mask scale that is not a finite number above zero.
    #[error("mask sigma must be finite and > 0, got {sigma}")]
    InvalidMaskSigma { sigma: f64 },

    /// The node family is not defined for so few workers (second-kind points need two).
    #[error("N >= {min} violated for {family} worker nodes: N = {workers}")]
    TooFewWorkersForNodes { family: NodeFamily, workers: usize, min: usize },

    /// A responder index that names no worker.
    #[error("worker index < N violated: responder {worker} but N = {workers}")]
    ResponderOutOfRange { worker: usize, workers: usize },

    /// A worker index that names no worker of the code (asking for its coded query).
    #[error("worker index < N violated: worker {worker} but N = {workers}")]
    WorkerOutOfRange { worker: usize, workers: usize },

    /// The same worker listed twice among the responders.
    #[error("responders must be distinct: worker {worker} is listed twice")]
    DuplicateResponder { worker: usize },

    /// More responders than workers.
    #[error("responders <= N violated: {received} responders but N = {workers}")]
    TooManyResponders { received: usize, workers: usize },

    /// Fewer responders than the code was built to tolerate (`N - S`).
    #[error(
        "responders >= N - S violated{}: {received} < {workers} - {stragglers} = {}",
        group.map(|g| format!(" in group {g}")).unwrap_or_default(),
        workers - stragglers
    )]
    NotEnoughResponders { group: Option<usize>, received: usize, workers: usize, stragglers: usize },

    /// More responders with NaN or infinite answers than the `A` faulty answers a group may
    /// hold: they are all removed, so the rest no longer suffice for the guarantee.
    #[error(
        "non-finite answers <= A violated in group {group}: {non_finite} answers hold NaN or infinity but A = {byzantine}"
    )]
    TooManyFaulty { group: usize, non_finite: usize, byzantine: usize },

    /// A calibration used with a code or row length it was not learnt for.
    #[error("the calibration describes {calibration}, not this code's {code}")]
    CalibrationMismatch { calibration: String, code: String },

    /// A calibration whose statistics do not have the shapes its code implies (a damaged or
    /// hand-edited file).
    #[error("the calibration is damaged: {}", match position {
        Some(p) => format!("worker {p}'s statistics have the wrong shape or threshold"),
        None => format!("{positions} worker positions, not one per worker"),
    })]
    InvalidCalibration { position: Option<usize>, positions: usize },

    /// Suspected positions that are not distinct workers of the code in increasing order (a
    /// calibration's, or those asked to be fitted without).
    #[error("suspected worker positions must increase and be below {workers}: {suspected:?}")]
    InvalidSuspects { suspected: Vec<usize>, workers: usize },

    /// Too few honest answers at a worker position to learn how they vary.
    #[error(
        "calibration samples >= {needed} violated at worker {position}: {samples} honest answers (calibrate on more groups)"
    )]
    TooFewCalibrationSamples { position: usize, samples: usize, needed: usize },

    /// Honest features whose covariance cannot be factored even after regularisation (a
    /// NaN in the samples).
    #[error("the honest answers at worker {position} have no usable covariance")]
    SingularCalibration { position: usize },

    /// A false-alarm probability outside `(0, 0.5)`.
    #[error("0 < false alarm < 0.5 violated: {false_alarm}")]
    InvalidFalseAlarm { false_alarm: f64 },

    /// A row length (`D` for queries, `C` for outputs) of zero.
    #[error("{what} > 0 violated: rows of length 0")]
    EmptyRows { what: &'static str },

    /// A buffer whose length is not a whole number of groups.
    #[error("{what}: length {len} is not a whole number of groups of {rows_per_group} rows x {row_len} values")]
    NotWholeGroups { what: &'static str, len: usize, rows_per_group: usize, row_len: usize },

    /// A buffer whose length does not match what the other arguments imply.
    #[error("{what}: expected {expected} values, got {actual}")]
    ShapeMismatch { what: &'static str, expected: usize, actual: usize },

    /// A coding weight that is NaN or infinite. Valid parameters never produce one; this is
    /// the guard that keeps a numerical fault from reaching user data silently.
    #[error("{matrix} weight [{row}, {col}] is {value}, not finite")]
    NonFiniteWeight { matrix: &'static str, row: usize, col: usize, value: f64 },
}

/// The codec's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
