"""A long scoring run: resumable after a crash, spread over processes, able to stream its input.

The rows are cut into *blocks* of ``part_rows`` consecutive rows. Process ``r`` of ``W`` (``torchrun`` or
``accelerate launch``; one process when started plainly) scores blocks ``r, r + W, r + 2W, ...`` with its own
device (``cuda:<local rank>``, or the CPU). Finished rows are saved as *part files* in a work directory
next to the output (``<output>.parts/part-<first row>-<end row>.parquet``: the input columns, ``row_id`` and
the score columns), written atomically (a temporary file, then ``os.replace``). A part is written when a
block is done, and earlier when ``part_seconds`` have passed since the last one, so a crash loses about
that much work (plus the batch under way). After every process is done, the main one checks that the parts cover every row once,
gathers them in row order into the output (a saved dataset, or one ``.parquet`` file), and removes them.

Running the same command again after a crash (kill -9 included) or Ctrl-C scores only the rows no part
covers, whatever the number of processes. ``manifest.json`` in the work directory records the scorer's
settings: parts from other settings are never mixed in (see :func:`plan`). The input is identified by
content, not by its file's date: each part records a hash of the input rows it covers, and a resume keeps a
part only while the input's rows there hash the same, so fixing a row that was never scored (or touching the
file) keeps every finished part. Before planning, the main process checks every part: one that is unreadable,
truncated, or whose rows do not match its name is renamed ``*.corrupt`` (kept for a look), one whose input
rows changed is renamed ``*.stale`` (removed once the output is gathered); their rows are scored again, with
a :class:`RunWarning` and a line in the summary. A Ctrl-C saves the rows already scored, then raises
:class:`RunInterrupted`, whose message says how many rows are saved.

The output is replaced only when this library wrote it (the manifest records the output it wrote, by size
and modification time): an existing dataset or ``.parquet`` file from elsewhere is refused unless
``overwrite=True`` (``--overwrite``); a folder that is not a saved dataset, or a file that is not a
``.parquet`` file, is refused always. The output is written beside its place, then moved there.

A streamed input (an ``IterableDataset``) is read block by block, so it never has to fit in memory;
every process reads the stream and scores its own blocks.

The output may be any fsspec URL (``s3://bucket/scored.parquet``, ``gs://...``, ``file:///...``): the parts, the
manifest and the output are then written and read through fsspec (see :mod:`hf_prospector.storage`), and the
gather downloads the parts to a local temporary folder first.

Every output row has a ``row_id``: the input's own column when it has one (it must be unique), else the
row's position in the input. Shards, resumed runs and reports match rows by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, Value, concatenate_datasets, load_from_disk

from .diagnostics import template_fit
from .formats import row_count
from .sources import load_rows, save_rows
from .storage import Place, is_url, secrets_hidden, shown
from .utils import ROW_ID, float_column, numeric_kind, require_int, require_unique_row_ids

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: the input is identified by the hashes of its rows in each part, not a fingerprint
DEFAULT_BATCH_SIZE = 256
DEFAULT_PART_ROWS = 4096
DEFAULT_PART_SECONDS = 300.0
_PART_NAME = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
PART_METADATA = b"hf_prospector"  # a part's Parquet schema metadata key: {"input_rows": hash of its input rows}


class RunMismatchError(RuntimeError):
    """The work directory holds unfinished parts of a run with other scorer settings."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`score_run`, after the rows scored so far were saved; ``str()`` is one line saying
    how many rows are saved and how to resume. A ``KeyboardInterrupt``, so callers still see an interrupt."""


class RunWarning(UserWarning):
    """Earlier parts set aside (corrupt, or their input rows changed): their rows are scored again."""


@dataclass
class RunSummary:
    """What a run did: ``rows_scored`` were scored now, ``rows_resumed`` came from an earlier run's parts (kept).

    ``rows_input_changed`` rows of earlier parts were scored again because their input rows changed;
    ``corrupt_parts`` names the parts set aside as corrupt (their rows were scored again too).
    """

    output: str
    rows: int
    rows_scored: int
    rows_resumed: int
    seconds: float
    processes: int
    rows_per_process: list[int]
    nan_rows: int
    nan_reasons: dict[str, int]
    rows_input_changed: int = 0
    corrupt_parts: list[str] = field(default_factory=list)
    ifd_at_least_one_share: float | None = None  # share of rows with a finite IFD that have IFD >= 1
    template_check: str = ""  # that share in words, with what to try when it points at the template

    def to_text(self) -> str:
        per_process = ", ".join(str(n) for n in self.rows_per_process)
        lines = [f"rows: {self.rows} ({self.rows_scored} scored now, {self.rows_resumed} by an earlier run)",
                 f"processes: {self.processes} (rows scored per process: {per_process})",
                 f"time: {self.seconds:.1f} s" + (f" ({self.rows_scored / self.seconds:.1f} rows/s overall)"
                                                  if self.rows_scored and self.seconds > 0 else ""),
                 f"NaN rows: {self.nan_rows}"]
        lines += [f"  {count} x {reason}" for reason, count in sorted(self.nan_reasons.items(), key=lambda x: -x[1])]
        if self.rows_input_changed:
            lines.append(f"input changed: {self.rows_input_changed} rows of earlier parts were scored again "
                         f"({self.rows_resumed} kept)")
        if self.corrupt_parts:
            lines.append(f"corrupt parts set aside, their rows scored again: {', '.join(self.corrupt_parts)}")
        if self.template_check:
            lines.append(self.template_check)
        lines.append(f"output: {self.output}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def work_dir(output: str | Path) -> Path | str:
    """Where a run keeps its parts and manifest: ``<output>.parts`` beside the output (a URL beside a URL)."""
    where = str(output).rstrip("/\\") + ".parts"
    return where if is_url(where) else Path(where)


def score_run(source: Dataset | IterableDataset, scorer, output: str | Path, *, source_name: str,
              batch_size: int = DEFAULT_BATCH_SIZE, part_rows: int = DEFAULT_PART_ROWS,
              part_seconds: float = DEFAULT_PART_SECONDS, fresh: bool = False, overwrite: bool = False,
              progress: bool = True) -> tuple[Dataset | None, RunSummary | None]:
    """Score ``source`` with ``scorer`` into ``output`` (a saved-dataset folder, or a ``.parquet`` file; a path or
    an fsspec URL).

    ``source_name`` names the input in the manifest. ``fresh=True`` discards earlier parts;
    ``overwrite=True`` lets the run replace an output that it did not write. Returns the scored dataset and a
    summary in the main process, ``(None, None)`` in the others. Call it from every process of a
    ``torchrun``/``accelerate`` launch. Ctrl-C raises :class:`RunInterrupted` once the scored rows are saved.
    """
    check_run_options(batch_size, part_rows, part_seconds)
    return execute(_Run(source, scorer, output, source_name, batch_size, part_rows, part_seconds, progress),
                   fresh, overwrite)


def check_run_options(batch_size: int, part_rows: int, part_seconds: float) -> None:
    for name, value in (("batch_size", batch_size), ("part_rows", part_rows)):
        require_int(name, value, 1)
    if part_seconds < 0:
        raise ValueError(f"part_seconds must be >= 0, got {part_seconds}")


def execute(run: _Run, fresh: bool, overwrite: bool) -> tuple[Dataset | None, RunSummary | None]:
    """Carry out ``run`` (:func:`score_run`'s, or a Ray run's); Ctrl-C becomes :class:`RunInterrupted`. No error
    shows the output URL's credentials."""
    with _datasets_progress_bars_off(), secrets_hidden(run.output.where):  # one bar for the run, not one per part
        try:
            return run.run(fresh, overwrite)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(run.interrupted_message(fresh)) from None


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

    Same settings: resume (or nothing to do when complete and the output it wrote is there; the caller
    checks that the input is the same too). Other settings with nothing unfinished: start anew. Other
    settings with unfinished parts: refuse, naming what differs, since silently discarding or mixing hours of
    work are both wrong; ``fresh=True`` discards them. (The input is not part of ``identity``: a resume keeps
    the parts whose input rows are unchanged.)
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
    def __init__(self, source, scorer, output: str | Path, source_name: str, batch_size: int, part_rows: int,
                 part_seconds: float, progress: bool):
        import torch

        self.state = process_state()
        self.source, self.scorer, self.output = source, scorer, Place(output)
        self.source_name = shown(source_name)  # the manifest is a file others read: no credentials in it
        self.work = Place(work_dir(output))
        self.streaming = isinstance(source, IterableDataset)
        self.batch_size, self.part_rows, self.part_seconds = batch_size, part_rows, part_seconds
        self.progress = progress
        self.rank, self.world = self.state.process_index, self.state.num_processes
        # On CUDA the scorer puts process `local rank` on GPU `local rank % count`; on the CPU it keeps all cores.
        self.device_rank = self.state.local_process_index if torch.cuda.is_available() else None
        if self.world > 1 and self.device_rank is None:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # no oversubscription
        self.identity = json.loads(json.dumps({"scorer": scorer.settings()}, sort_keys=True, default=str))
        self.rows_scored = 0
        self.rows_input_changed, self.corrupt_parts = 0, []  # what the main process set aside

    # -- manifest and work directory -----------------------------------------------------------------
    def _manifest(self) -> dict | None:
        path = self.work / MANIFEST
        if not path.exists():
            return None
        manifest = json.loads(path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:  # format 1 also named the input: compare the scorer only
            manifest["identity"] = {"scorer": manifest.get("identity", {}).get("scorer")}
        return manifest

    def _write_manifest(self, **extra) -> None:
        text = json.dumps({"format": MANIFEST_FORMAT, "identity": self.identity, "source": self.source_name, **extra},
                          indent=2, sort_keys=True)
        (self.work / MANIFEST).write(lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _parts(self) -> list[tuple[int, int, Place]]:
        return list_parts(self.work)

    # -- the run -------------------------------------------------------------------------------------
    def run(self, fresh: bool, overwrite: bool):
        start = time.monotonic()
        if not self.streaming and ROW_ID in self.source.column_names:
            require_unique_row_ids(self.source[ROW_ID])
        manifest = self._manifest()
        ours = self._output_is_ours(manifest)
        self._check_output_replaceable(ours, overwrite)
        # Every process decides alike from the same files; only the main one changes them.
        action = plan(manifest, self.identity, bool(self.work.exists() and self._parts()), ours, fresh)
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            self._prepare(action, manifest, ours)
        self.state.wait_for_everyone()
        if self._manifest().get("complete"):  # still complete after _prepare: the output is up to date
            return self._finish(start, already_done=True)
        total = self._score_my_blocks()
        self.state.wait_for_everyone()
        return self._finish(start, total=total)

    def _prepare(self, action: str, manifest: dict | None, ours: bool) -> None:
        """The main process readies the work directory: anew, with its parts checked, or kept as done."""
        if action == "done" and not self._same_input(manifest):
            action = "new"  # the input changed since the finished run: its output is stale
        if action == "new":
            self.work.remove()
            self.work.mkdir()
            # The output an earlier run wrote stays ours (a new run may replace it) until it is replaced.
            self._write_manifest(complete=False, processes=self.world, output=manifest.get("output") if ours else None)
        elif action == "resume":
            self._set_aside_bad_parts()

    def interrupted_message(self, fresh: bool) -> str:
        """The one line a Ctrl-C shows: how many rows are saved, and how to resume."""
        manifest = self._manifest() or {}
        if manifest.get("complete"):
            return f"interrupted: all {manifest.get('rows', 0):,} rows are scored and saved in {self.output}"
        saved = sum(b - a for a, b, _ in self._parts()) if self.work.is_dir() else 0
        of = "" if self.streaming else f" of {len(self.source):,}"
        again = "run the same command again without --fresh (fresh=False)" if fresh else "run the same command again"
        return f"interrupted: {saved:,}{of} rows are saved in {self.work}; {again} to resume"

    # -- checking earlier parts ----------------------------------------------------------------------
    def _set_aside_bad_parts(self) -> None:
        """Check every part before planning what is missing: keep those whose input rows are unchanged;
        rename a corrupt one ``*.corrupt`` and one whose input changed ``*.stale``, so that their rows are
        scored again instead of failing the gather on every rerun."""
        parts = self._parts()
        positional = ROW_ID not in (self.source.column_names or [])
        changed, corrupt = [], []
        for (a, b, path), (_, _, current) in zip(parts, self._input_rows([(a, b) for a, b, _ in parts])):
            problem = _part_problem(path, a, b, current, positional)
            if problem == _INPUT_CHANGED:
                changed.append((a, b, path))
                path.rename(path.name + ".stale")
            elif problem:
                path.rename(path.name + ".corrupt")
                self.corrupt_parts.append(path.name)
                corrupt.append(f"{path} is corrupt ({problem}): set aside as {path.name}.corrupt; its rows "
                               f"{a}..{b} are scored again")
        if corrupt:  # one warning naming them all
            warnings.warn("\n".join(corrupt), RunWarning, stacklevel=2)
        self.rows_input_changed = sum(b - a for a, b, _ in changed)
        if changed:
            kept = sum(b - a for a, b, _ in self._parts())
            warnings.warn(f"the input changed in {self.rows_input_changed} rows of {len(changed)} earlier part(s) "
                          f"(first: rows {changed[0][0]}..{changed[0][1]}): they are scored again; {kept} rows "
                          "of unchanged parts are kept", RunWarning, stacklevel=2)

    def _same_input(self, manifest: dict) -> bool:
        """Whether the input is the one the finished run in ``manifest`` scored: the same fingerprint, or the
        same rows (the hashes of its parts' rows, and no more rows after them)."""
        if not self.streaming and manifest.get("fingerprint") == self.source._fingerprint:
            return True
        blocks, rows = manifest.get("blocks"), manifest.get("rows")
        if blocks is None or rows is None or (not self.streaming and len(self.source) != rows):
            return False
        expected = {(a, b): digest for a, b, digest in blocks}
        # A last range just past the end finds whether a stream has more rows than the finished run had.
        for a, b, current in self._input_rows([(a, b) for a, b, _ in blocks] + [(rows, rows + 1)]):
            if (a, b) == (rows, rows + 1):
                return current is None
            if current is None or _rows_hash(current) != expected[(a, b)]:
                return False
        return True

    def _input_rows(self, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int, dict[str, list] | None]]:
        """``(a, b, rows)`` for each range of ``ranges`` (sorted): the :meth:`_prepared` input rows ``a:b``, or
        None when the input ends before ``b``. A stream is read once, only as far as the ranges need."""
        if not self.streaming:
            n = len(self.source)
            for a, b in ranges:
                yield a, b, self._prepared(self.source[a:b], a) if b <= n else None
            return
        batches = self.source.iter(batch_size=self.part_rows)
        held, held_start = {}, 0  # the stream's rows from held_start on, as columns
        for a, b in ranges:
            while held_start + row_count(held) < b:
                batch = next(batches, None)
                if batch is None:
                    break
                held = {k: held.get(k, []) + v for k, v in batch.items()}
                cut = min(max(a - held_start, 0), row_count(held))  # rows before this range are not needed
                held, held_start = {k: v[cut:] for k, v in held.items()}, held_start + cut
            if held_start + row_count(held) < b:
                yield a, b, None
            else:
                yield a, b, self._prepared({k: v[a - held_start: b - held_start] for k, v in held.items()}, a)

    # -- scoring -------------------------------------------------------------------------------------
    def _score_my_blocks(self) -> int:
        """Score the missing rows of this process's blocks; returns the input's row count."""
        from tqdm.auto import tqdm

        self.scorer.engine(self.device_rank)  # load the model first, so the progress bar measures scoring
        done = [(a, b) for a, b, _ in self._parts()]
        bounds = None if self.streaming else self._block_bounds(len(self.source))
        bar = tqdm(total=None if bounds is None else sum(e - s for s, e in bounds),
                   initial=0 if bounds is None else sum(_overlap(done, s, e) for s, e in bounds),
                   unit="rows", desc="scoring", dynamic_ncols=True,
                   disable=not (self.progress and self.state.is_main_process))
        if bounds is not None:  # compile="auto" weighs the compile against the rows this process has left
            self.scorer.expect_rows(bar.total - bar.n)
        try:
            for block_start, block_end, read in self._my_blocks():
                todo = _missing(done, block_start, block_end)
                if todo:
                    rows = read()
                    for a, b in todo:
                        self._score_range(rows, block_start, a, b, bar)
        finally:
            bar.close()
            self.scorer.expect_rows(None)
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
            size = row_count(rows)
            if index % self.world == self.rank:
                yield start, start + size, lambda rows=rows, start=start: self._prepared(rows, start)
            start += size
        self.stream_rows = start

    def _prepared(self, rows: dict[str, list], start: int) -> dict[str, list]:
        """The input columns the output keeps (score columns are replaced, as ``Dataset.map`` does), with
        ``row_id`` (the row position unless the input has its own) first."""
        rows = {k: v for k, v in rows.items() if k not in self.scorer.score_columns}
        if ROW_ID in rows:
            return rows
        return {ROW_ID: list(range(start, start + row_count(rows))), **rows}

    def _features(self) -> Features | None:
        """The features of :meth:`_prepared` rows (None for a stream that does not declare its own)."""
        features = self.source.features
        if features is None:
            return None
        kept = {k: f for k, f in features.items() if k not in self.scorer.score_columns}
        return Features(kept if ROW_ID in kept else {ROW_ID: Value("int64"), **kept})

    def _score_range(self, rows: dict[str, list], block_start: int, a: int, b: int, bar) -> None:
        def scored(n: int) -> None:
            self.rows_scored += n
            bar.update(n)

        writer = PartWriter(self.scorer, self.work, self._features(), self.batch_size, self.part_seconds,
                            self.device_rank)
        writer.score_range(rows, block_start, a, b, scored)

    # -- gathering -----------------------------------------------------------------------------------
    def _finish(self, start: float, total: int | None = None, already_done: bool = False):
        counts = self._rows_per_process()
        self.state.destroy_process_group()
        if not self.state.is_main_process:
            return None, None
        ds = self._load_output() if already_done else self._gather(total)
        nan_rows, reasons = nan_summary(ds, self.scorer.score_columns)
        summary = RunSummary(str(self.output), len(ds), sum(counts), len(ds) - sum(counts),
                             time.monotonic() - start, len(counts), counts, nan_rows, reasons,
                             self.rows_input_changed, self.corrupt_parts)
        fit = template_fit(ds, template=getattr(self.scorer, "template", None), model=self.scorer.model)
        if fit is not None:
            summary.ifd_at_least_one_share, summary.template_check = fit.share, fit.describe()
        return ds, summary

    def _rows_per_process(self) -> list[int]:
        """The rows each process scored in this run (every process calls it)."""
        from accelerate.utils import gather_object

        return gather_object([self.rows_scored])

    def _gather(self, total: int) -> Dataset:
        parts = self._parts()
        gaps = _missing([(a, b) for a, b, _ in parts], 0, total)
        overlaps = [(p[2].name, q[2].name) for p, q in zip(parts, parts[1:]) if q[0] < p[1]]
        if gaps or overlaps or (total and not parts):
            raise RuntimeError(f"the parts in {self.work} do not cover rows 0..{total} exactly once "
                               f"(missing: {gaps[:5]}, overlapping: {overlaps[:5]}); re-run the same command "
                               "to score the missing rows")
        # Local parts are read in place, with the datasets cache beside them. A URL's are downloaded to a local
        # folder first, which also holds the cache and the output as written, loaded from there once uploaded.
        local = None if not self.output.url else _local_folder()
        cache = self.work.where / "cache" if local is None else local / "cache"
        files = [part.local_copy(None if local is None else local / "parts") for _, _, part in parts]
        blocks = [[a, b, _recorded_hash(pq.read_schema(str(file)))] for (a, b, _), file in zip(parts, files)]
        if parts:
            ds = Dataset.from_parquet([str(file) for file in files], features=_merged_features(files),
                                      cache_dir=str(cache))
        else:  # 0 rows in, 0 rows out, with every column typed (the next step finds its score columns)
            features = Features({**(self._features() or {ROW_ID: Value("int64")}), **self.scorer.features})
            ds = Dataset.from_dict({name: [] for name in features}, features=features)
        self._check_row_ids(ds, total)
        # Written beside the output, then moved: a crash never leaves a half-written output.
        staged = None if local is None else local / self.output.name
        self.output.write(lambda tmp, rows=ds: save_rows(rows, tmp, parquet=self.output.suffix == ".parquet"),
                          clear=True, staged=staged)
        del ds
        for _, _, part in parts:
            part.remove()
        for part in self.work.glob("part-*.parquet.stale"):  # superseded by the rows just gathered
            part.remove()
        shutil.rmtree(cache, ignore_errors=True)
        if local is not None:
            shutil.rmtree(local / "parts", ignore_errors=True)
        self._write_manifest(complete=True, processes=self.world, rows=total, blocks=blocks,
                             fingerprint=None if self.streaming else self.source._fingerprint,
                             output=self._output_signature())
        return self._load_output(staged)

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

    # -- the output ----------------------------------------------------------------------------------
    def _output_signature(self) -> list | None:
        """What identifies the output this library wrote: the :meth:`~hf_prospector.storage.Place.signature` (size
        and modification time) of the ``.parquet`` file, or of a saved dataset's ``state.json``; None when there is
        no output."""
        path = self.output / "state.json" if self.output.is_dir() else self.output
        return path.signature()

    def _output_is_ours(self, manifest: dict | None) -> bool:
        """Whether the output exists and is the one a run in this work directory wrote."""
        signature = self._output_signature()
        return signature is not None and manifest is not None and manifest.get("output") == signature

    def _check_output_replaceable(self, ours: bool, overwrite: bool) -> None:
        """Before any work: an existing output must be one this library could have written (a .parquet
        file or a saved dataset), never some other folder or file that replacing it would destroy; and one
        it did not write is replaced only with ``overwrite``."""
        out = self.output
        if out.is_dir() and not ((out / "state.json").exists() and (out / "dataset_info.json").exists()):
            raise FileExistsError(f"the output {out} is a folder but not a saved dataset; choose another output "
                                  "(a new folder, or a .parquet file)")
        if out.is_file() and out.suffix != ".parquet":
            raise FileExistsError(f"the output {out} is a file but not a .parquet file; choose another output")
        if out.exists() and not ours and not overwrite:
            raise FileExistsError(f"the output {out} already holds {_describe_output(out)}, not written by a run "
                                  "here; pass --overwrite (overwrite=True) to replace it, or choose another output")

    def _load_output(self, local: Path | None = None) -> Dataset:
        """The output as written, from ``local`` (its local copy) when given; a URL's is downloaded first."""
        if local is None and self.output.url:
            local = self.output.local_copy(_local_folder())
        return load_rows(str(local or self.output.where))


class PartWriter:
    """Scores rows in batches and saves them as part files: what each process of a run does, and each actor of a
    Ray run (:mod:`hf_prospector.ray_runner`), so both write the same parts. ``features``: those of the input
    rows kept (``row_id`` first), None to infer them."""

    def __init__(self, scorer, work: str | Path | Place, features: Features | None, batch_size: int,
                 part_seconds: float, device_rank: int | None = None):
        self.scorer, self.work, self.features = scorer, Place(work), features
        self.batch_size, self.part_seconds, self.device_rank = batch_size, part_seconds, device_rank

    def score_range(self, rows: dict[str, list], block_start: int, a: int, b: int,
                    on_scored: Callable[[int], None] = lambda n: None) -> None:
        """Score rows ``a:b`` in batches; write a part at ``b``, whenever ``part_seconds`` have passed, and on
        Ctrl-C (the rows scored since the last part, so that an interrupt loses only the batch under way)."""
        extra = () if self.device_rank is None else (self.device_rank,)
        part_start, last_write, scores = a, time.monotonic(), {}

        def save(end: int) -> None:
            done = {k: v[part_start - block_start: end - block_start] for k, v in rows.items()}
            scored = {k: v[:end - part_start] for k, v in scores.items()}
            self.write_part(part_start, end, concatenate_datasets(
                [Dataset.from_dict(done, features=self.features), Dataset.from_dict(scored)], axis=1), done)

        try:
            for s in range(a, b, self.batch_size):
                e = min(s + self.batch_size, b)
                batch = {k: v[s - block_start: e - block_start] for k, v in rows.items()}
                for column, values in self.scorer(batch, *extra).items():
                    scores.setdefault(column, []).extend(values)
                on_scored(e - s)
                if e == b or time.monotonic() - last_write >= self.part_seconds:
                    save(e)
                    part_start, last_write, scores = e, time.monotonic(), {}
        except KeyboardInterrupt:
            scored = min((len(v) for v in scores.values()), default=0)  # whole rows: every column has them
            if scored:
                save(part_start + scored)
            raise

    def write_part(self, start: int, end: int, part: Dataset, input_rows: dict[str, list]) -> None:
        """Write a part atomically, with the hash of its input rows in its schema metadata."""
        schema = part.features.arrow_schema
        metadata = {**(schema.metadata or {}), PART_METADATA: json.dumps({"input_rows": _rows_hash(input_rows)})}
        table = part.data.table.cast(schema).replace_schema_metadata(metadata)
        (self.work / f"part-{start:012d}-{end:012d}.parquet").write(lambda tmp: pq.write_table(table, str(tmp)))


def list_parts(work: str | Path | Place) -> list[tuple[int, int, Place]]:
    """``(first row, end row, place)`` of each part file in the work directory ``work``, in row order."""
    found = [(int(m[1]), int(m[2]), p) for p in Place(work).glob("part-*.parquet") if (m := _PART_NAME.match(p.name))]
    return sorted(found, key=lambda part: part[:2])


# -- helpers -------------------------------------------------------------------------------------------
def nan_summary(ds: Dataset, columns: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """Rows with a NaN in any float score column, and their ``*_note`` reasons (digits shown as N)."""
    floats = [c for c in columns if c in ds.column_names and numeric_kind(ds.features[c]) == "float"]
    if not floats:
        return 0, {}
    nan = np.zeros(len(ds), dtype=bool)
    for c in floats:
        nan |= np.isnan(float_column(ds, c))
    note = next((c for c in columns if c.endswith("_note") and c in ds.column_names), None)
    notes = ds.select(np.flatnonzero(nan))[note] if note else ["(no note column)"] * int(nan.sum())
    reasons = Counter(re.sub(r"\d+", "N", text) or "(no note)" for text in notes)
    return int(nan.sum()), dict(reasons)


_INPUT_CHANGED = "input changed"


def _part_problem(path: Place, a: int, b: int, current: dict[str, list] | None, positional: bool) -> str | None:
    """Why the part ``path`` (rows ``a:b``) cannot be kept: what makes it corrupt (unreadable, or its rows
    are not those its name says), else ``_INPUT_CHANGED`` when the input's rows ``a:b`` (``current``, None past
    the input's end) no longer hash as the part records, else None. ``positional``: ``row_id`` is the row's
    position, so the name alone says what it must be; an input's own ``row_id`` may have changed with it."""
    try:  # read whole: a truncated or damaged file fails here, whatever the error pyarrow finds
        with path.reading() as source:
            table = pq.read_table(source)
        recorded = _recorded_hash(table.schema)
        ids = table.column(ROW_ID).to_pylist()
    except Exception as err:  # noqa: BLE001 -- any failure to read it makes the part corrupt
        return f"unreadable: {type(err).__name__}: {str(err)[:200]}"
    if table.num_rows != b - a:
        return f"{table.num_rows} rows where its name says {b - a}"
    same_input = current is not None and recorded == _rows_hash(current)
    # Positional row_ids are known from the name; the input's own are comparable only while its rows are the same.
    expected = list(range(a, b)) if positional else current[ROW_ID] if same_input else None
    if expected is not None and ids != expected:
        return f"its row_ids are not those of the input's rows {a}..{b}"
    return None if same_input else _INPUT_CHANGED


def _rows_hash(rows: dict[str, list]) -> str:
    """A hash of rows given as columns, the same in every process and run: blake2b over canonical JSON."""
    text = json.dumps([[name, values] for name, values in rows.items()], sort_keys=True, ensure_ascii=False,
                      default=_json_value)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _json_value(value: Any) -> Any:
    """A JSON form of a value ``json`` cannot write (an object without a stable text only makes its part
    rescored, never kept wrongly)."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    for method in ("isoformat", "tolist"):  # dates and times; numpy values
        if hasattr(value, method):
            return getattr(value, method)()
    return str(value)


def _recorded_hash(schema) -> str | None:
    """The input-rows hash a part's Arrow schema records in its metadata (None for parts of older versions)."""
    return json.loads((schema.metadata or {}).get(PART_METADATA, b"{}")).get("input_rows")


def _describe_output(path: Place) -> str:
    """What an existing output holds, for an error message (a URL's saved dataset is not downloaded for it: its
    columns are those its ``dataset_info.json`` names)."""
    try:
        if path.is_dir() and path.url:
            columns = json.loads((path / "dataset_info.json").read_text())["features"]
            return f"a saved dataset (columns: {', '.join(columns)})"
        if path.is_dir():
            ds = load_from_disk(str(path.where))
            return f"a saved dataset of {len(ds):,} rows (columns: {', '.join(ds.column_names)})"
        with path.reading() as source:
            return f"a .parquet file of {pq.read_metadata(source).num_rows:,} rows"
    except Exception:  # noqa: BLE001 -- unreadable: say what it looks like
        return "a saved dataset" if path.is_dir() else "a .parquet file"


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


def _merged_features(files: list[Path]) -> Features:
    """The features of the part files ``files``, a column's type taken from the first part where it is not
    all-null."""
    merged: dict[str, Any] = {}
    for path in files:
        for name, feature in Features.from_arrow_schema(pq.read_schema(str(path))).items():
            if name not in merged or merged[name] == Value("null"):
                merged[name] = feature
    return Features(merged)


def _local_folder() -> Path:
    """A new local folder for the files of a URL output (its downloaded parts, the datasets cache, the output as
    loaded), inside the one datasets removes when the process ends: the loaded output maps its files from here."""
    from datasets.fingerprint import get_temporary_cache_files_directory

    return Path(tempfile.mkdtemp(prefix="hf_prospector-", dir=get_temporary_cache_files_directory()))


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
