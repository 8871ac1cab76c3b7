//! Process-wide settings that every genrec binary applies first thing in
//! `main`, before any thread or tensor exists.

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tensor ops allocate and free buffers of megabytes at a high rate. The system
/// allocator, and mimalloc by default, hand them back to the OS at once, so every
/// op paid page faults and zeroing (most of a CPU training step, a quarter of a
/// small model's request). mimalloc, told never to purge freed memory, reuses
/// them. Only has an effect where mimalloc is the global allocator.
pub fn tune_allocator() {
    // SAFETY: sets an allocator option; no allocation depends on its old value.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Sets `RAYON_NUM_THREADS` to the available parallelism when it is unset.
/// candle looks the thread count up on every matrix product, and without the
/// variable that lookup parses `/proc/cpuinfo` (7% of a small model's request
/// time here). Call before any other thread starts.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", cores().to_string());
    }
}

/// Cores this process may use (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Whether a loop over `work` items (at least `min` to be worth it) should be
/// split over rayon's pool. Not when the pool has one thread (one worker per
/// core, each on single-threaded kernels): the loop would queue on that one
/// pool thread, shared by every worker, instead of running where it was called.
pub fn parallel(work: usize, min: usize) -> bool {
    work >= min && rayon::current_num_threads() > 1
}
