"""Benchmark: rows/s of ``hf-prospector score`` on Ray (``--engine ray``) vs the single-process run.

The first ``--rows`` rows of ``../shared/data/alpaca_52k.json`` are scored (IFD) by the command line, as a user
runs it, once in one process (``--engine local``) and once on a local Ray cluster started by the command
(one actor per GPU, else ``--actors`` actors of ``--cpus-per-actor`` CPUs), alternating over ``--rounds``.
Two figures per run: the command's wall time (Python start, Ray start, model loads included) and the run
summary's rows/s (from the run's start: Ray's actors and their model loads included, Python start not).
The ratio Ray / local says what Ray's scheduling costs on this machine (on one machine it cannot gain: the
same cores or GPUs score the same rows; it pays off on more machines).

    python bench/bench_ray.py                          # 512 rows, the embedded SmolLM2-135M
    python bench/bench_ray.py --rows 64 --actors 2     # a smoke run
    python bench/bench_ray.py --rows 96 --actors 2 --local-threads 1   # a busy 2-core machine
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness


def score_command(data: Path, output: Path, args, engine: str) -> list[str]:
    command = [sys.executable, "-m", "hf_prospector", "score", str(data), "--output", str(output), "--model",
               args.model, "--dtype", args.dtype, "--batch-size", str(args.batch_size), "--part-rows",
               str(args.part_rows), "--show", "0", "--engine", engine]
    if engine == "ray":
        command += ["--cpus-per-actor", str(args.cpus_per_actor)]
        if args.actors:
            command += ["--actors", str(args.actors)]
    return command


def run_once(data: Path, args, engine: str, folder: Path) -> dict:
    """One run of the command: wall seconds, the summary's rows/s, and its processes line."""
    output = folder / f"{engine}-{time.monotonic_ns()}.parquet"
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(harness.REPO_ROOT)}
    if engine == "local" and args.local_threads:  # torch's threads in the one process (Ray gives an actor its CPUs')
        env["OMP_NUM_THREADS"] = str(args.local_threads)
    done = subprocess.run(score_command(data, output, args, engine), cwd=harness.REPO_ROOT, capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{engine} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rate = re.search(r"\(([\d.]+) rows/s overall\)", done.stdout)
    processes = re.search(r"^processes: .*$", done.stdout, re.M)
    return {"wall_s": wall, "rows_per_s": float(rate[1]) if rate else float("nan"),
            "processes": processes[0] if processes else "?"}


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--part-rows", type=int, default=16, help="rows per part: each is one task of a Ray actor")
    p.add_argument("--actors", type=int, help="Ray actors (default: one per GPU, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--local-threads", type=int,
                   help="torch threads of the one-process run (default: one per core); 1 on a busy machine, where "
                        "threads that wait on each other slow it far more than they slow 1-CPU Ray actors")
    args = p.parse_args()
    import torch

    from hf_prospector.engine import resolve_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = harness.dtype_name(resolve_dtype(args.dtype, device))
    harness.print_header(f"IFD via the CLI, {args.rows} rows of alpaca_52k, {args.model}, dtype {dtype} on {device}"
                         + (f" ({torch.cuda.get_device_name(0)} x {torch.cuda.device_count()})"
                            if device.type == "cuda" else ""), args)
    harness.report_load("start")
    rows = harness.first_rows("alpaca_52k.json", args.rows)
    results: dict[str, list[dict]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "rows.jsonl"
        rows.to_json(str(data))
        for r in range(args.rounds):  # alternating, so that a burst of load hits both alike
            for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                results[engine].append(run_once(data, args, engine, folder))
                print(f"# round {r + 1}, {engine}: {results[engine][-1]}", flush=True)
    median = {e: {k: statistics.median(m[k] for m in runs) for k in ("wall_s", "rows_per_s")}
              for e, runs in results.items()}
    table = [[e, f"{m['wall_s']:.1f}", f"{m['rows_per_s']:.2f}", f"{args.rows / m['wall_s']:.2f}",
              results[e][0]["processes"]] for e, m in median.items()]
    harness.print_table(["engine", "wall s", "rows/s (summary)", "rows/s (wall)", "processes"], table)
    ratio = median["ray"]["rows_per_s"] / median["local"]["rows_per_s"]
    wall_ratio = median["local"]["wall_s"] / median["ray"]["wall_s"]
    print(f"# Ray / local: {ratio:.2f}x the summary's rows/s, {wall_ratio:.2f}x by wall time")
    harness.report_end_load()
    harness.save_results("bench_ray", {"rows": args.rows, "dtype": dtype, "device": str(device), "runs": results,
                                       "median": median, "ratio_rows_per_s": ratio, "ratio_wall": wall_ratio})


if __name__ == "__main__":
    main()
