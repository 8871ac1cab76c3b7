//! The crash harness, long (`benches/crash.sh`): `--iterations` rounds of a
//! SIGKILL at a random instant while three clients upsert and delete through
//! HTTP and compactions run, each restart checked for every acknowledged
//! edit (see `tests/common/crash.rs`). Prints the figures and one Markdown
//! row for `benches/results/reliability.md`; exits 1 when anything was lost.
//!
//! With `--replicas`, the same against three replicas on one Redis, Redis
//! killed too in about half the rounds (`crash::run_replicas`).
//!
//! With `--disk-full`, the disk-full harness instead (`disk_full::run`),
//! `--requests` recommendation requests timed before and while the disk is
//! full.
//!
//! cargo bench --bench crash -- --iterations 200
//! cargo bench --bench crash -- --disk-full --requests 2000
//! cargo bench --bench crash -- --replicas --iterations 50

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
    if args.iter().any(|a| a == "--disk-full") {
        let Some(r) = common::disk_full::run(arg("--requests", 2000) as usize) else {
            eprintln!("no tmpfs can be mounted here: run as root (or with CAP_SYS_ADMIN)");
            std::process::exit(2);
        };
        println!("{r:#?}");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} |",
            r.acked_before + r.acked_writing + r.acked_after,
            r.sent_while_full,
            r.refused_507,
            r.other_answers.len() + r.bad_bodies,
            r.compact_status,
            r.lost.len(),
            r.phantoms.len(),
            r.p50_ms_before,
            r.p99_ms_before,
            r.p50_ms_writing,
            r.p99_ms_writing,
            r.p50_ms_full,
            r.p99_ms_full,
            r.seconds
        );
        std::process::exit(if r.clean() { 0 } else { 1 });
    }
    let replicas = args.iter().any(|a| a == "--replicas");
    let max_run = Duration::from_millis(max_run_ms);
    let r = if replicas {
        common::crash::run_replicas(iterations as usize, max_run, seed)
    } else {
        common::crash::run(iterations as usize, max_run, seed)
    };
    println!("{r:#?}");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
        if replicas { "3 replicas + Redis" } else { "single server" },
        r.iterations,
        r.redis_kills,
        r.upserts_acked,
        r.deletes_acked,
        r.compactions,
        r.checked,
        r.lost.len(),
        r.phantoms.len(),
        r.diverged.len(),
        r.failed_starts,
        r.seconds
    );
    if !r.clean() {
        std::process::exit(1);
    }
}
