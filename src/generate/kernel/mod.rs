//! The fused beam step of `kernels/beam_step.cu` (the GPU side of the contract
//! in [`super::step`]): what each launch requires of its shape ([`contract`]),
//! the per-level child filters it reads ([`filters`]), a
//! CPU port of its algorithm that the tests hold to the reference
//! ([`mirror`]), and, with the `cuda` feature, its launcher ([`cuda`]) and the
//! batched GPU search that keeps every step on the device ([`gpu_search`]).

pub mod contract;
pub mod filters;
pub mod mirror;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod gpu_search;

pub use filters::{LevelFilters, NodeLists};

use std::sync::atomic::{AtomicUsize, Ordering};

use contract::Selection;

/// The selection GPU searches use, process-wide: 0 for the radix kernel,
/// otherwise the pooled kernel's capacity.
static SERVING: AtomicUsize = AtomicUsize::new(0);

/// The beam-step kernel GPU searches run: [`Selection::Radix`], verified on
/// an H200, unless [`set_serving_selection`] chose another. The pooled one
/// gives the same answer in the CPU port's tests and becomes the default
/// once a GPU run has confirmed it.
pub fn serving_selection() -> Selection {
    decode(SERVING.load(Ordering::Relaxed))
}

/// Chooses the kernel of every GPU search from now on (`genrec gpu-check`
/// runs the end-to-end parts under both).
pub fn set_serving_selection(s: Selection) {
    SERVING.store(encode(s), Ordering::Relaxed);
}

fn encode(s: Selection) -> usize {
    match s {
        Selection::Radix => 0,
        Selection::Pool { capacity } => capacity.max(1),
    }
}

fn decode(v: usize) -> Selection {
    match v {
        0 => Selection::Radix,
        capacity => Selection::Pool { capacity },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (the global itself is not touched: other tests in this binary set it)
    #[test]
    fn selections_round_trip_through_the_stored_number() {
        for s in [Selection::Radix, Selection::POOL, Selection::Pool { capacity: 48 }] {
            assert_eq!(decode(encode(s)), s);
        }
        assert_eq!(decode(0), Selection::Radix, "the default is the radix kernel");
    }
}
