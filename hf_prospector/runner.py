"""A long scoring run: resumable after a crash, spread over processes, able to stream its input.

The rows are cut into *blocks* of ``part_rows`` consecutive rows. Process ``r`` of ``W`` (``torchrun`` or
``accelerate launch``; one process when started plainly) scores blocks ``r, r + W, r + 2W, ...`` with its own
device (``cuda:<local rank>``, or the CPU). Finished rows are saved as *part files* in a work directory
next to the output (``<output>.parts/part-<first row>-<end row>.parquet``: the input columns, ``row_id`` and
the score columns), written atomically (a temporary file, then ``os.replace``). A part is written when a
block is done, and earlier when ``part_seconds`` have passed since the last one, so a crash loses about
that much work (plus the batch under way). After every process is done, the main one checks that the parts cover every row once,
gathers them in row order into the output (a saved dataset, or one ``.parquet`` file), and removes them.

Running the same command again after a crash (kill -9 included) scores only the rows no part covers,
whatever the number of processes. ``manifest.json`` in the work directory records the scorer's settings
and the input's identity: parts from other settings are never mixed in (see :func:`plan`).

A streamed input (an ``IterableDataset``) is read block by block, so it never has to fit in memory;
every process reads the stream and scores its own blocks.

Every output row has a ``row_id``: the input's own column when it has one (it must be unique), else the
row's position in the input. Shards, resumed runs and reports match rows by it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, Value, concatenate_datasets, load_from_disk

ROW_ID = "row_id"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_BATCH_SIZE = 256
DEFAULT_PART_ROWS = 4096
DEFAULT_PART_SECONDS = 300.0
_PART_NAME = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")


class RunMismatchError(RuntimeError):
    """The work directory holds unfinished parts of a run with other settings or another input."""


@dataclass
class RunSummary:
    """What a run did: ``rows_scored`` were scored now, ``rows_resumed`` came from an earlier run's parts."""

    output: str
    rows: int
    rows_scored: int
    rows_resumed: int
    seconds: float
    processes: int
    rows_per_process: list[int]
    nan_rows: int
    nan_reasons: dict[str, int]

    def to_text(self) -> str:
        per_process = ", ".join(str(n) for n in self.rows_per_process)
        lines = [f"rows: {self.rows} ({self.rows_scored} scored now, {self.rows_resumed} by an earlier run)",
                 f"processes: {self.processes} (rows scored per process: {per_process})",
                 f"time: {self.seconds:.1f} s" + (f" ({self.rows_scored / self.seconds:.1f} rows/s overall)"
                                                  if self.rows_scored and self.seconds > 0 else ""),
                 f"NaN rows: {self.nan_rows}"]
        lines += [f"  {count} x {reason}" for reason, count in sorted(self.nan_reasons.items(), key=lambda x: -x[1])]
        lines.append(f"output: {self.output}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def work_dir(output: str | Path) -> Path:
    """Where a run keeps its parts and manifest: ``<output>.parts`` beside the output."""
    return Path(str(output).rstrip("/\\") + ".parts")


def score_run(source: Dataset | IterableDataset, scorer, output: str | Path, *, source_name: str,
              batch_size: int = DEFAULT_BATCH_SIZE, part_rows: int = DEFAULT_PART_ROWS,
              part_seconds: float = DEFAULT_PART_SECONDS, fresh: bool = False,
              progress: bool = True) -> tuple[Dataset | None, RunSummary | None]:
    """Score ``source`` with ``scorer`` into ``output`` (a saved-dataset folder, or a ``.parquet`` file).

    ``source_name`` names the input in the manifest (a streamed input has no fingerprint of its own).
    ``fresh=True`` discards earlier parts. Returns the scored dataset and a summary in the main process,
    ``(None, None)`` in the others. Call it from every process of a ``torchrun``/``accelerate`` launch.
    """
    for name, value in (("batch_size", batch_size), ("part_rows", part_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if part_seconds < 0:
        raise ValueError(f"part_seconds must be >= 0, got {part_seconds}")
    run = _Run(source, scorer, Path(output), source_name, batch_size, part_rows, part_seconds, progress)
    with _datasets_progress_bars_off():  # one bar for the whole run, not one per part file
        return run.run(fresh)


def process_state():
    """This process's place in a ``torchrun``/``accelerate launch`` (one process otherwise): a ``PartialState``."""
    import torch
    from accelerate import PartialState

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if gpus and local > gpus:  # NCCL would fail with "invalid device ordinal" on the extra ranks
        raise RuntimeError(f"{local} processes were launched on this machine but it has {gpus} GPU(s): launch one "
                           f"per GPU (torchrun --nproc_per_node {gpus}, accelerate launch --num_processes {gpus}), "
                           "or hide the GPUs (CUDA_VISIBLE_DEVICES=) to score on CPU ranks")
    return PartialState(cpu=not gpus)


def plan(manifest: dict | None, identity: dict, has_parts: bool, output_exists: bool, fresh: bool) -> str:
    """What to do with a work directory: ``"new"``, ``"resume"`` or ``"done"``.

    Same settings and input: resume (or nothing to do when complete and the output exists). Other settings
    with nothing unfinished: start anew. Other settings with unfinished parts: refuse, naming what differs,
    since silently discarding or mixing hours of work are both wrong; ``fresh=True`` discards them.
    """
    if manifest is None or fresh:
        return "new"
    if manifest.get("identity") != identity:
        if manifest.get("complete") or not has_parts:
            return "new"
        changes = "; ".join(_differences(manifest.get("identity", {}), identity)) or "manifest format"
        raise RunMismatchError(f"the work directory holds unfinished parts of another run ({changes}); "
                               "re-run with the earlier settings to finish it, pass --fresh (fresh=True) to "
                               "discard it, or choose another output")
    if manifest.get("complete"):
        return "done" if output_exists else "new"
    return "resume"


class _Run:
    def __init__(self, source, scorer, output: Path, source_name: str, batch_size: int, part_rows: int,
                 part_seconds: float, progress: bool):
        import torch

        self.state = process_state()
        self.source, self.scorer, self.output = source, scorer, output
        self.work = work_dir(output)
        self.streaming = isinstance(source, IterableDataset)
        self.batch_size, self.part_rows, self.part_seconds = batch_size, part_rows, part_seconds
        self.progress = progress
        self.rank, self.world = self.state.process_index, self.state.num_processes
        # On CUDA the scorer puts process `local rank` on GPU `local rank % count`; on the CPU it keeps all cores.
        self.device_rank = self.state.local_process_index if torch.cuda.is_available() else None
        if self.world > 1 and self.device_rank is None:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # no oversubscription
        self.identity = json.loads(json.dumps({"scorer": scorer.settings(), "source": self._source_identity(source_name)},
                                              sort_keys=True, default=str))
        self.rows_scored = 0

    # -- identity and work directory ---------------------------------------------------------------
    def _source_identity(self, name: str) -> dict:
        if self.streaming:
            return {"name": name, "streaming": True, "columns": list(self.source.column_names or [])}
        if len(self.source) == 0:
            raise ValueError(f"{name}: the input has no rows to score")
        return {"name": name, "fingerprint": self.source._fingerprint, "rows": len(self.source),
                "columns": self.source.column_names}

    def _manifest(self) -> dict | None:
        path = self.work / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def _write_manifest(self, **extra) -> None:
        _atomic_write_text(self.work / MANIFEST, json.dumps({"format": MANIFEST_FORMAT, "identity": self.identity,
                                                             **extra}, indent=2, sort_keys=True))

    def _parts(self) -> list[tuple[int, int, Path]]:
        found = [(int(m[1]), int(m[2]), p) for p in self.work.glob("part-*.parquet") if (m := _PART_NAME.match(p.name))]
        return sorted(found)

    # -- the run -------------------------------------------------------------------------------------
    def run(self, fresh: bool):
        start = time.monotonic()
        if not self.streaming and ROW_ID in self.source.column_names:
            require_unique_row_ids(self.source[ROW_ID])
        self._check_output_replaceable()
        # Every process decides alike from the same files; only the main one changes them.
        action = plan(self._manifest(), self.identity, bool(self.work.exists() and self._parts()),
                      self.output.exists(), fresh)
        self.state.wait_for_everyone()
        if action == "new" and self.state.is_main_process:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            self._write_manifest(complete=False, processes=self.world)
        self.state.wait_for_everyone()
        if action == "done":
            return self._finish(start, already_done=True)
        self.scorer.engine(self.device_rank)  # load the model first, so the progress bar measures scoring
        total = self._score_my_blocks()
        self.state.wait_for_everyone()
        return self._finish(start, total=total)

    def _score_my_blocks(self) -> int:
        """Score the missing rows of this process's blocks; returns the input's row count."""
        from tqdm.auto import tqdm

        done = [(a, b) for a, b, _ in self._parts()]
        bounds = None if self.streaming else self._block_bounds(len(self.source))
        bar = tqdm(total=None if bounds is None else sum(e - s for s, e in bounds),
                   initial=0 if bounds is None else sum(_overlap(done, s, e) for s, e in bounds),
                   unit="rows", desc="scoring", dynamic_ncols=True,
                   disable=not (self.progress and self.state.is_main_process))
        for block_start, block_end, read in self._my_blocks():
            todo = _missing(done, block_start, block_end)
            if todo:
                rows = read()
                for a, b in todo:
                    self._score_range(rows, block_start, a, b, bar)
        bar.close()
        return self.stream_rows if self.streaming else len(self.source)

    def _block_bounds(self, n: int) -> list[tuple[int, int]]:
        starts = range(self.rank * self.part_rows, n, self.world * self.part_rows)
        return [(s, min(s + self.part_rows, n)) for s in starts]

    def _my_blocks(self) -> Iterator[tuple[int, int, Callable[[], dict[str, list]]]]:
        """``(first row, end row, read)`` for each block of this process; ``read()`` gives its rows as
        columns, ``row_id`` included. A stream is read whole (every process counts its rows)."""
        if not self.streaming:
            for s, e in self._block_bounds(len(self.source)):
                yield s, e, lambda s=s, e=e: self._prepared(self.source[s:e], s)
            return
        start = 0
        for index, rows in enumerate(self.source.iter(batch_size=self.part_rows)):
            size = len(rows[next(iter(rows))])
            if index % self.world == self.rank:
                yield start, start + size, lambda rows=rows, start=start: self._prepared(rows, start)
            start += size
        self.stream_rows = start

    def _prepared(self, rows: dict[str, list], start: int) -> dict[str, list]:
        """The input columns the output keeps (score columns are replaced, as ``Dataset.map`` does), with
        ``row_id`` (the row position unless the input has its own) first."""
        rows = {k: v for k, v in rows.items() if k not in self.scorer.columns}
        if ROW_ID in rows:
            return rows
        size = len(next(iter(rows.values()))) if rows else 0
        return {ROW_ID: list(range(start, start + size)), **rows}

    def _features(self) -> Features | None:
        """The features of :meth:`_prepared` rows (None for a stream that does not declare its own)."""
        features = self.source.features
        if features is None:
            return None
        kept = {k: f for k, f in features.items() if k not in self.scorer.columns}
        return Features(kept if ROW_ID in kept else {ROW_ID: Value("int64"), **kept})

    def _score_range(self, rows: dict[str, list], block_start: int, a: int, b: int, bar) -> None:
        """Score rows ``a:b`` in batches; write a part at ``b`` and whenever ``part_seconds`` have passed."""
        extra = () if self.device_rank is None else (self.device_rank,)
        part_start, last_write, scores = a, time.monotonic(), {}
        for s in range(a, b, self.batch_size):
            e = min(s + self.batch_size, b)
            batch = {k: v[s - block_start: e - block_start] for k, v in rows.items()}
            for column, values in self.scorer(batch, *extra).items():
                scores.setdefault(column, []).extend(values)
            self.rows_scored += e - s
            bar.update(e - s)
            if e == b or time.monotonic() - last_write >= self.part_seconds:
                done = {k: v[part_start - block_start: e - block_start] for k, v in rows.items()}
                self._write_part(part_start, e, concatenate_datasets(
                    [Dataset.from_dict(done, features=self._features()), Dataset.from_dict(scores)], axis=1))
                part_start, last_write, scores = e, time.monotonic(), {}

    def _write_part(self, start: int, end: int, part: Dataset) -> None:
        final = self.work / f"part-{start:012d}-{end:012d}.parquet"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        part.to_parquet(str(tmp))
        os.replace(tmp, final)

    # -- gathering -----------------------------------------------------------------------------------
    def _finish(self, start: float, total: int | None = None, already_done: bool = False):
        from accelerate.utils import gather_object

        counts = gather_object([self.rows_scored])
        self.state.destroy_process_group()
        if not self.state.is_main_process:
            return None, None
        ds = self._load_output() if already_done else self._gather(total)
        nan_rows, reasons = nan_summary(ds, self.scorer.columns)
        summary = RunSummary(str(self.output), len(ds), sum(counts), len(ds) - sum(counts),
                             time.monotonic() - start, self.world, counts, nan_rows, reasons)
        return ds, summary

    def _gather(self, total: int) -> Dataset:
        parts = self._parts()
        gaps = _missing([(a, b) for a, b, _ in parts], 0, total)
        overlaps = [(p[2].name, q[2].name) for p, q in zip(parts, parts[1:]) if q[0] < p[1]]
        if gaps or overlaps or not parts:
            raise RuntimeError(f"the parts in {self.work} do not cover rows 0..{total} exactly once "
                               f"(missing: {gaps[:5]}, overlapping: {overlaps[:5]}); re-run the same command "
                               "to score the missing rows")
        cache = self.work / "cache"
        ds = Dataset.from_parquet([str(p) for _, _, p in parts], features=_merged_features(parts),
                                  cache_dir=str(cache))
        self._check_row_ids(ds, total)
        self._remove_output()
        if self.output.suffix == ".parquet":
            self.output.parent.mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(self.output))
        else:
            ds.save_to_disk(str(self.output))
        del ds
        for _, _, path in parts:
            path.unlink()
        shutil.rmtree(cache, ignore_errors=True)
        self._write_manifest(complete=True, processes=self.world, rows=total)
        return self._load_output()

    def _check_row_ids(self, ds: Dataset, total: int) -> None:
        """The gathered rows are the input's rows, in the input's order."""
        got = ds[ROW_ID]
        if self.streaming:
            if ROW_ID in (self.source.column_names or []):
                require_unique_row_ids(got)
                return
            expected = list(range(total))
        else:
            expected = self.source[ROW_ID] if ROW_ID in self.source.column_names else list(range(total))
        if got != expected:
            first = next(i for i, (g, x) in enumerate(zip(got, expected)) if g != x) if len(got) == len(expected) \
                else min(len(got), len(expected))
            raise RuntimeError(f"the gathered rows differ from the input from row {first} on; delete {self.work} "
                               "and run again")

    def _check_output_replaceable(self) -> None:
        """Before any work: an existing output must be one this library could have written (a .parquet
        file or a saved dataset), never some other folder that replacing it would destroy."""
        out = self.output
        if out.is_dir() and not ((out / "state.json").exists() and (out / "dataset_info.json").exists()):
            raise FileExistsError(f"the output {out} is a folder but not a saved dataset; choose another output "
                                  "(a new folder, or a .parquet file)")
        if out.is_file() and out.suffix != ".parquet":
            raise FileExistsError(f"the output {out} is a file but not a .parquet file; choose another output")

    def _remove_output(self) -> None:
        if self.output.is_dir():
            shutil.rmtree(self.output)
        elif self.output.exists():
            self.output.unlink()

    def _load_output(self) -> Dataset:
        if self.output.suffix == ".parquet":
            return Dataset.from_parquet(str(self.output))
        return load_from_disk(str(self.output))


# -- helpers -------------------------------------------------------------------------------------------
def require_unique_row_ids(values: list) -> None:
    """``row_id`` must name each row once; the error names a repeated value and its rows."""
    first_seen: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in first_seen:
            raise ValueError(f"column {ROW_ID!r} repeats the value {value!r} (rows {first_seen[value]} and {i}); "
                             f"{ROW_ID} must identify rows: make it unique, or rename or drop it to have the "
                             "row positions used")
        first_seen[value] = i


def nan_summary(ds: Dataset, columns: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """Rows with a NaN in any float score column, and their ``*_note`` reasons (digits shown as N)."""
    floats = [c for c in columns if c in ds.column_names and isinstance(ds.features[c], Value)
              and ds.features[c].dtype.startswith("float")]
    if not floats:
        return 0, {}
    table = ds.with_format("arrow", columns=floats)[:]
    nan = np.zeros(len(ds), dtype=bool)
    for c in floats:
        nan |= np.isnan(np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64))
    note = next((c for c in columns if c.endswith("_note") and c in ds.column_names), None)
    notes = ds.select(np.flatnonzero(nan))[note] if note else ["(no note column)"] * int(nan.sum())
    reasons = Counter(re.sub(r"\d+", "N", text) or "(no note)" for text in notes)
    return int(nan.sum()), dict(reasons)


def _missing(done: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The sub-ranges of ``start:end`` that no ``(a, b)`` range in ``done`` covers."""
    gaps, at = [], start
    for a, b in sorted(done):
        if b <= at or a >= end:
            continue
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    if at < end:
        gaps.append((at, end))
    return gaps


def _overlap(done: list[tuple[int, int]], start: int, end: int) -> int:
    return (end - start) - sum(b - a for a, b in _missing(done, start, end))


def _merged_features(parts: list[tuple[int, int, Path]]) -> Features:
    """The parts' features, a column's type taken from the first part where it is not all-null."""
    merged: dict[str, Any] = {}
    for _, _, path in parts:
        for name, feature in Features.from_arrow_schema(pq.read_schema(path)).items():
            if name not in merged or merged[name] == Value("null"):
                merged[name] = feature
    return Features(merged)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for each leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


@contextmanager
def _datasets_progress_bars_off():
    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
