//! The fused beam step of `kernels/beam_step.cu` (the GPU side of the contract
//! in [`super::step`]): what each launch requires of its shape ([`contract`]),
//! the per-level child filters it reads ([`filters`]), the live overlay's
//! patched nodes ([`patch`]) and the priors it adds ([`priors`]), a
//! CPU port of its algorithm that the tests hold to the reference
//! ([`mirror`]), and, with the `cuda` feature, its launcher ([`cuda`]) and the
//! batched GPU search that keeps every step on the device ([`gpu_beam`]).

pub mod contract;
pub mod filters;
pub mod mirror;
pub mod patch;
pub mod priors;

#[cfg(test)]
mod live_tests;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod gpu_beam;

pub use filters::{LevelFilters, NodeLists};

use std::sync::atomic::{AtomicUsize, Ordering};

use contract::BeamKernel;

/// The selection GPU searches use, process-wide: 0 for the radix kernel,
/// otherwise the pooled kernel's capacity.
static SERVING: AtomicUsize = AtomicUsize::new(0);

/// The beam-step kernel GPU searches run: [`BeamKernel::Radix`], verified on
/// an H200, unless [`set_serving_kernel`] chose another. The pooled one
/// gives the same answer in the CPU port's tests and becomes the default
/// once a GPU run has confirmed it.
pub fn serving_kernel() -> BeamKernel {
    decode(SERVING.load(Ordering::Relaxed))
}

/// Chooses the kernel of every GPU search from now on (`genrec gpu-check`
/// runs the end-to-end parts under both).
pub fn set_serving_kernel(s: BeamKernel) {
    SERVING.store(encode(s), Ordering::Relaxed);
}

fn encode(s: BeamKernel) -> usize {
    match s {
        BeamKernel::Radix => 0,
        BeamKernel::Pool { capacity } => capacity.max(1),
    }
}

fn decode(v: usize) -> BeamKernel {
    match v {
        0 => BeamKernel::Radix,
        capacity => BeamKernel::Pool { capacity },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (the global itself is not touched: other tests in this binary set it)
    #[test]
    fn selections_round_trip_through_the_stored_number() {
        for s in [BeamKernel::Radix, BeamKernel::POOL, BeamKernel::Pool { capacity: 48 }] {
            assert_eq!(decode(encode(s)), s);
        }
        assert_eq!(decode(0), BeamKernel::Radix, "the default is the radix kernel");
    }
}
