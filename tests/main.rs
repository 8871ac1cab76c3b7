//! The integration tests, as one binary (one link instead of one per file):
//! each module starts the real `genrec` binary on a loopback port, or drives
//! the library's public API the way a user of the crate would.
//! `cargo test --release --test integration <module>::` runs one module.

mod common;

mod catalog;
mod cli;
mod coldstart;
mod controls;
mod crash;
mod gpu;
mod hf_compat;
mod hub;
mod llm_layout;
mod metrics_memory;
mod openapi;
mod replicas;
mod server;
mod serving;
mod sharded_build;

/// Live heap bytes of this process, for [`metrics_memory`], whose test runs
/// alone in a child process of this binary so that no other test's
/// allocations are counted.
#[global_allocator]
static HEAP: common::heap::Counting = common::heap::Counting;
