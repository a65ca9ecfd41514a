"""What the bench scripts share: the data they read, fair timing on a busy machine, memory, FLOPs, tables.

Fair timing: the baseline and the candidate run in one process, alternating (A B, then B A, ...) for
several rounds, and each is reported by its median round, so a burst of load from other processes
hits both alike. The load average is printed at the start and the end, with a warning above 1.0.
Each round also records the process's CPU time: on a busy machine, ``--threads 1`` and the CPU-time
ratio give a comparison that other processes barely disturb (with more threads, OpenMP's waiting
threads spin and inflate CPU time too).

Memory: the peak resident set of the process during one call, measured exactly by resetting the
kernel's high-water mark (``/proc/self/clear_refs``, Linux) before the call and reading ``VmHWM`` after.

FLOPs, as the issue counts them: ``2 x non-embedding parameters x tokens run through the model`` plus
``2 x vocabulary x hidden size x positions projected``. Hooks on the model's backbone and output
projection count both as the model runs, padding included, so the count needs no knowledge of how a
caller batches. Attention's own products (QK^T, AV) are not counted, as in the issue's definition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data sets beside the checkout; HF_PROSPECTOR_SHARED_DATA names another folder (a GPU machine's copy).
SHARED_DATA = Path(os.environ.get("HF_PROSPECTOR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
RESULTS = REPO_ROOT / "bench" / "results"


# -- data ---------------------------------------------------------------------------------------------
def shared_file(name: str) -> Path:
    """``<SHARED_DATA>/<name>``; without it the benchmark is skipped (exit 0)."""
    path = SHARED_DATA / name
    if not path.is_file():
        print(f"skipped: {path} is absent (the benchmarks read the shared data sets beside the checkout)")
        sys.exit(0)
    return path


def first_rows(name: str, n: int):
    """The first ``n`` rows of a shared json file as a ``datasets.Dataset`` (what users load)."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(shared_file(name)), split="train")
    return ds.select(range(min(n, len(ds))))


# -- the machine and its load ------------------------------------------------------------------------
def machine() -> str:
    import torch

    from hf_prospector.engine import cpu_class, resolve_dtype

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    auto = dtype_name(resolve_dtype("auto", torch.device("cpu")))
    return (f"{cpu}, {os.cpu_count()} CPUs, class {cpu_class()} (dtype auto: {auto}), torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")


def report_load(when: str, own_threads: int = 0) -> float:
    """Print the 1-minute load average; above 1.0 other processes share the cores and timings are slow.

    At the end of a run the average includes the run's own busy threads (``own_threads``), which the
    warning discounts.
    """
    load = os.getloadavg()[0]
    own = f" (this run's {own_threads} busy thread{'s' * (own_threads > 1)} included)" if own_threads else ""
    busy = load - own_threads > 1.0
    warning = "  WARNING: other processes load the machine; timings are noisy and slow" if busy else ""
    print(f"# load average at {when}: {load:.2f}{own}{warning}", flush=True)
    return load


def report_end_load() -> float:
    import torch

    return report_load("end", torch.get_num_threads())


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser titled by the script's docstring, with the flags every script shares."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own, one per core); 1 on a busy machine")
    return p


def print_header(description: str, args: argparse.Namespace) -> None:
    """Apply ``--threads``, then print the command, what runs and the machine."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"# {description}")
    print(f"# {machine()}")


# -- timing and memory --------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def rss_mb() -> float:
    """The current resident set of this process (0 where /proc is absent)."""
    return (_status_kb("VmRSS") or 0) / 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The resident set's high-water mark since the last :func:`reset_peak_rss` (or since the start)."""
    import resource

    hwm = _status_kb("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Measurement:
    """One timed call: seconds, CPU seconds, RSS before, peak RSS during, and what the call returned."""

    def __init__(self, fn: Callable):
        exact = reset_peak_rss()
        self.rss_before = rss_mb()
        start, cpu = time.perf_counter(), time.process_time()
        self.result = fn()
        self.seconds = time.perf_counter() - start
        self.cpu_seconds = time.process_time() - cpu
        self.peak_rss = peak_rss_mb()
        self.peak_exact = exact  # False: the process-wide peak, which may predate the call

    @property
    def working_mb(self) -> float:
        """Peak RSS above what the process held before the call (weights and data loaded earlier excluded)."""
        return self.peak_rss - self.rss_before


def interleave(runs: dict[str, Callable], rounds: int) -> dict[str, list[Measurement]]:
    """Run every callable once per round, in turn, reversing the order every other round."""
    names = list(runs)
    out: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(Measurement(runs[name]))
            m = out[name][-1]
            print(f"#   round {r + 1}/{rounds}  {name}: {m.seconds:.2f} s ({m.cpu_seconds:.2f} CPU s), "
                  f"peak RSS {m.peak_rss:.0f} MB", flush=True)
    return out


def median_run(measurements: list[Measurement], key: Callable = lambda m: m.seconds) -> Measurement:
    """The round with the median ``key``, by default its time (the lower middle one for an even count)."""
    ordered = sorted(measurements, key=key)
    return ordered[(len(ordered) - 1) // 2]


def median_seconds(measurements: list[Measurement]) -> float:
    return statistics.median(m.seconds for m in measurements)


def median_cpu_seconds(measurements: list[Measurement]) -> float:
    return statistics.median(m.cpu_seconds for m in measurements)


# -- FLOPs --------------------------------------------------------------------------------------------
class FlopCounter:
    """Counts the positions a causal LM runs and projects, with forward hooks, and the FLOPs they cost.

    ``tokens``: positions through the backbone (padding included); ``real_tokens``: those the attention
    mask marks as real; ``projected``: positions through the output projection: ``head``, the module an engine
    applies (``engine.head``, which may wrap the model's own and never call it), else the model's.
    """

    def __init__(self, model, head=None):
        self.hidden = model.config.hidden_size
        self.vocab = model.get_output_embeddings().weight.shape[0]
        embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        self.non_embedding = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        self.reset()
        # Counting is Python state: compiled code must call the hooks, not trace them (that would recompile
        # for every new count).
        import torch

        self._handles = [
            model.base_model.register_forward_pre_hook(torch.compiler.disable(self._count_backbone), with_kwargs=True),
            (head or model.get_output_embeddings()).register_forward_pre_hook(torch.compiler.disable(self._count_head)),
        ]

    def reset(self) -> None:
        self.tokens = self.real_tokens = self.projected = 0

    def _count_backbone(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.tokens += ids.numel()
        self.real_tokens += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()

    def _count_head(self, module, args):
        self.projected += args[0].numel() // self.hidden

    @property
    def flops(self) -> float:
        return 2.0 * self.non_embedding * self.tokens + 2.0 * self.vocab * self.hidden * self.projected

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def matmul_sample(dtype, seconds: float, size: int = 2048) -> tuple[float, float]:
    """FLOPs done and seconds taken by ``size x size x size`` matrix products in ``dtype``, repeated for at
    least ``seconds`` (the machine's attainable rate is their ratio)."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    calls, taken = repeat_for(lambda: a @ b, seconds)
    return 2.0 * size ** 3 * calls, taken


def repeat_for(fn: Callable, seconds: float) -> tuple[int, float]:
    """Call ``fn`` at least once and until ``seconds`` have passed: the calls made and the seconds they took."""
    start, done = time.perf_counter(), 0
    while not done or time.perf_counter() - start < seconds:
        fn()
        done += 1
    return done, time.perf_counter() - start


# -- output -------------------------------------------------------------------------------------------
def print_table(header: list[str], rows: list[list]) -> str:
    """Print a Markdown table, its columns aligned, and return its text."""
    from hf_prospector.utils import markdown_table

    text = markdown_table(header, rows, pad=True)
    print(text, flush=True)
    return text


def save_results(name: str, data: dict) -> Path:
    """Write ``bench/results/<name>.json`` (git-ignored) with the command and the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"command": f"python {shlex.join(sys.argv)}", "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"# saved {path.relative_to(REPO_ROOT)}")
    return path
