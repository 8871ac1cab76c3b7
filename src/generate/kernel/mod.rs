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
