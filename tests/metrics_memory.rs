//! The metrics recorder must not keep every histogram sample of a server that
//! nobody scrapes: a one-hour soak grew by 4 MB a minute until the recorder's
//! upkeep ran on a timer. Live heap bytes are counted by the test binary's
//! global allocator ([`crate::common::heap`]); the measurement runs in a
//! child process of this binary, alone, so that other tests' allocations
//! are not counted.

use std::process::Command;

use genrec::engine::BatchObserver;
use genrec::server::metrics;

use crate::common::heap;

/// Set in the child process that measures.
const CHILD: &str = "GENREC_TEST_HEAP_CHILD";

#[test]
fn unscraped_histograms_do_not_grow_the_heap() {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", "metrics_memory::measure_heap_growth", "--ignored", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the measuring child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // the child ran the measurement (not "0 tests")
    assert!(text.contains("1 passed"), "{text}");
}

/// The measurement, run by [`unscraped_histograms_do_not_grow_the_heap`] in
/// a process of its own.
#[test]
#[ignore = "run alone in a child process by unscraped_histograms_do_not_grow_the_heap"]
fn measure_heap_growth() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let _handle = metrics::handle();
    // what 200k requests in batches of 4 record: latency and queue wait per
    // request, size per batch
    let record = || {
        let waits = [std::time::Duration::from_micros(100); 4];
        for i in 0..200_000 {
            metrics::request("ok", 0.001 * (i % 50) as f64);
            if i % 4 == 0 {
                metrics::SchedulerMetrics.batch(4, &waits);
            }
        }
    };
    record();
    std::thread::sleep(metrics::UPKEEP_EVERY + std::time::Duration::from_secs(1));
    let before = heap::live();
    // The recorder keeps the sample blocks it drained for reuse, as many as
    // the most samples recorded between two upkeeps: the same two CI runs
    // grew by exactly 2,478,960 bytes when an upkeep split the first round
    // and not the second. That is bounded; kept samples grow every round
    // (7.4 MB per round with upkeep disabled). Three rounds must stay under
    // one round's 450k samples x 8 bytes.
    for _ in 0..3 {
        record();
        std::thread::sleep(metrics::UPKEEP_EVERY + std::time::Duration::from_secs(1));
    }
    let grown = heap::live() - before;
    let limit = 450_000 * 8;
    assert!(grown < limit, "the heap grew by {grown} bytes over 600k unscraped requests");
}
