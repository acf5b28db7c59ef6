//! Hot loops compiled for wider vector instructions where the processor has them.
//!
//! The crate is built for the baseline of its target (on x86-64, SSE2: two `f64` lanes); the
//! locators' scoring loops run four lanes wide where AVX2 is present, chosen at run time, so
//! one binary serves every processor. Only the instruction set changes, not the arithmetic:
//! Rust never fuses a multiply and an add or reorders a sum on its own, so both builds give
//! the same results to the bit (tested where they are used).
//!
//! A function runs its body as `vectorized(#[inline(always)] || { ... })`; what the body
//! calls is compiled for AVX2 only where it is inlined into it, so its helpers are
//! `#[inline(always)]` too.

/// Runs `f` compiled for AVX2 where the processor supports it (detected once, then cached by
/// the standard library), and as built otherwise.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    if PLAIN.get() {
        return f();
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2, as just checked.
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
thread_local! {
    /// Set by tests to run this thread's bodies as built, to compare both.
    static PLAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's [`vectorized`] bodies as built (for tests comparing both).
#[cfg(test)]
pub(crate) fn plain<R>(f: impl FnOnce() -> R) -> R {
    PLAIN.set(true);
    let result = f();
    PLAIN.set(false);
    result
}
