"""Benchmark: facility-location selection of k rows from n cached d-dimensional embeddings.

Prints a table (time, peak memory) and the command that made it. The embeddings are synthetic
(clustered Gaussian vectors, float32) in a ``Dataset`` column, so no encoder runs: this measures the
selection itself, through ``select_diverse`` as a user calls it. Peak memory is reported two ways:
Python-traced allocations (numpy, tracemalloc) and the process's resident set before and at its peak
(Linux /proc and getrusage), which also sees scikit-learn's native buffers. Compare with the dense n x n
float32 matrix that the sparse path avoids.

    python bench/bench_selection.py                      # 1,000 from 50,000 rows, 384 dims
    python bench/bench_selection.py --n 5000 --k 100     # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
import tracemalloc

import numpy as np


def clustered_embeddings(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:  # Linux: pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows to choose from")
    parser.add_argument("--d", type=int, default=384, help="embedding dimension (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--k", type=int, default=1_000, help="rows to select")
    parser.add_argument("--n-neighbors", type=int, default=None, help="default: the library's choice")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from datasets import Dataset, disable_progress_bars

    from hf_prospector.selection import select_diverse
    from hf_prospector.utils import markdown_table

    disable_progress_bars()
    X = clustered_embeddings(args.n, args.d, args.clusters, args.seed)
    ds = Dataset.from_dict({"row": np.arange(args.n), "embedding": X})
    del X
    rss_before = current_rss_mb()

    tracemalloc.start()
    start = time.perf_counter()
    out, report = select_diverse(ds, args.k, embedding_column="embedding",  # cached: no encoder runs
                                 n_neighbors=args.n_neighbors)
    seconds = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = peak_rss_mb()

    dense_mb = args.n * args.n * 4 / 1e6
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"{report.note}")
    rows = [("rows n", f"{args.n:,}"), ("dimension d", args.d), ("selected k", f"{len(out):,}"),
            ("time (s)", f"{seconds:.1f}"), ("peak traced memory (MB)", f"{traced / 1e6:.0f}"),
            ("process RSS before -> peak after (MB)", f"{rss_before:.0f} -> {rss_after:.0f}"),
            ("dense n x n float32 matrix (MB)", f"{dense_mb:,.0f}"),
            ("dense matrix / peak traced memory", f"{dense_mb / (traced / 1e6):.1f}x")]
    print(markdown_table(["measure", "value"], rows, pad=True))
    gains = out["fl_gain"][:]
    print(f"# first/last marginal gain: {gains[0]:.2f} / {gains[-1]:.4f}")


if __name__ == "__main__":
    main()
