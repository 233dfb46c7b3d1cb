//! Timing of the benchmarks that measure a computation in-process: the best of a few rounds.
//! Shared by `benches/mapping.rs`, `benches/formats.rs` and `benches/guide.rs`.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The shortest of `rounds` runs of `f` (its result kept from being optimised away).
pub fn best<T>(rounds: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}
