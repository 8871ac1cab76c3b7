//! The crash harness, long (`benches/crash.sh`): `--iterations` rounds of a
//! SIGKILL at a random instant while three clients upsert and delete through
//! HTTP and compactions run, each restart checked for every acknowledged
//! edit (see `tests/common/crash.rs`). Prints the figures and one Markdown
//! row for `benches/results/reliability.md`; exits 1 when anything was lost.
//!
//! cargo bench --bench crash -- --iterations 200

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, not {v}")))
            .unwrap_or(default)
    };
    let (iterations, max_run_ms, seed) = (arg("--iterations", 200), arg("--max-run-ms", 1500), arg("--seed", 1));
    let r = common::crash::run(iterations as usize, Duration::from_millis(max_run_ms), seed);
    println!("{r:#?}");
    println!(
        "| single server | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
        r.iterations,
        r.upserts_acked,
        r.deletes_acked,
        r.compactions,
        r.checked,
        r.lost.len(),
        r.phantoms.len(),
        r.failed_starts,
        r.seconds
    );
    if !r.clean() {
        std::process::exit(1);
    }
}
