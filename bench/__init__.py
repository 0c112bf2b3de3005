"""fastvit benchmark suite: kernel and model benchmarks, results file, report (see bench/RESULTS.md)."""
