//! `vmpilot-bench`: benchmarks with side-by-side baselines (issue 7). Run it with
//! `cargo run --release --bin vmpilot-bench [-- --quick]`; see docs/performance.md.
//!
//! The code lives in `src/bench/` and is compiled into this binary only.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
