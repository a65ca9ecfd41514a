"""Scoring on a Ray cluster: ``hf-prospector score ... --engine ray`` (recipe ``run.engine: ray``).

Ray Data streams the input's row ranges through a pool of scorer actors (one per GPU, or ``cpus_per_actor``
CPUs each) and does the scheduling, placement and retries; the run is otherwise :mod:`hf_prospector.runner`'s:
the same blocks, the same part files (written by the actors, each with the hash of its input rows), manifest,
gather and summary. So the output, its ``row_id`` s and a re-run are those of a single-process run: a re-run
scores only the rows no part holds. An actor that dies is restarted by Ray and its range retried; the range's
parts already written are kept, not scored again.

The cluster is ``RAY_ADDRESS`` when set (every node needs ``hf_prospector`` and the model), else a local one.
The work directory beside the output must be on storage that every node sees (a shared filesystem).

Ray Data's own checkpointing (``DataContext.checkpoint_config``, beta) records finished row ids only: it cannot
tell a row whose input or scorer settings changed since from a finished one, which the parts' input hashes and
the manifest do; so the parts are what a re-run resumes from.

The scorers are Ray Data UDFs too, without this module:
``ds.map_batches(IFDScorer, fn_constructor_kwargs={"model": ...}, concurrency=2, batch_format="pyarrow")``
(see :meth:`hf_prospector.scorers.base.Scorer.__call__`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from datasets import Dataset, IterableDataset

from .runner import (DEFAULT_BATCH_SIZE, DEFAULT_PART_ROWS, DEFAULT_PART_SECONDS, PartWriter, RunSummary, _missing,
                     _Run, check_run_options, execute, list_parts)
from .utils import require_int

INSTALL = "pip install 'hf_prospector[ray]'"


def require_ray():
    """The ``ray`` module with Ray Data; without it, an error that says what to install."""
    try:
        import ray
        import ray.data  # noqa: F401 -- Ray without its data extra lacks pyarrow-backed datasets
    except ImportError as err:
        raise ImportError(f"--engine ray (run.engine: ray) needs Ray Data, which is not installed here ({err}); "
                          f"install it with: {INSTALL}") from None
    return ray


def connect():
    """Join the cluster at ``RAY_ADDRESS``, else start a local one (once per process)."""
    ray = require_ray()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(include_dashboard=False)
    return ray


def score_run_ray(source: Dataset | IterableDataset, scorer, output: str | Path, *, source_name: str,
                  batch_size: int = DEFAULT_BATCH_SIZE, part_rows: int = DEFAULT_PART_ROWS,
                  part_seconds: float = DEFAULT_PART_SECONDS, fresh: bool = False, overwrite: bool = False,
                  actors: int | None = None, cpus_per_actor: int = 1,
                  progress: bool = True) -> tuple[Dataset, RunSummary]:
    """:func:`hf_prospector.runner.score_run` on a Ray cluster: ``actors`` scorer actors (default: one per GPU
    of the cluster, else one per ``cpus_per_actor`` of its CPUs). Call it once, from the driver."""
    check_run_options(batch_size, part_rows, part_seconds)
    if actors is not None:
        require_int("actors", actors, 1)
    require_int("cpus_per_actor", cpus_per_actor, 1)
    if "://" in str(output):
        raise ValueError(f"output {output}: --engine ray writes to a path (of a filesystem every node shares), "
                         "not a URL; give a path")
    connect()
    run = _RayRun(source, scorer, Path(output), source_name, batch_size, part_rows, part_seconds, progress)
    run.actors, run.cpus_per_actor = actors, cpus_per_actor
    return execute(run, fresh, overwrite)


class _RayRun(_Run):
    """A run whose rows are scored by Ray actors; planning, checking and gathering stay the driver's."""

    actors: int | None = None
    cpus_per_actor: int = 1
    rows_by_actor: dict[str, int]

    def _score_my_blocks(self) -> int:
        """Send each missing range to the actor pool; returns the input's row count."""
        import ray
        from tqdm.auto import tqdm

        done = [(a, b) for a, b, _ in self._parts()]
        ranges = []
        for block_start, block_end, read in self._my_blocks():  # one process: every block
            todo = _missing(done, block_start, block_end)
            rows = read() if todo else {}
            for a, b in todo:
                part = {k: v[a - block_start: b - block_start] for k, v in rows.items()}
                ranges.append({"start": a, "end": b, "rows": pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)})
        total = self.stream_rows if self.streaming else len(self.source)
        self.rows_by_actor = {}
        if not ranges:
            return total
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        size = self.actors or (gpus if gpus else max(1, cpus // self.cpus_per_actor))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": self.cpus_per_actor}
        # A block per range, so that every actor gets ranges to score.
        scored = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
            PartScorer, batch_size=1,
            # One range at a time per actor: a range is long work, and queued ranges would wait on a busy actor.
            compute=ray.data.ActorPoolStrategy(size=min(size, len(ranges)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"scorer": self.scorer, "work": str(self.work), "features": self._features(),
                                   "batch_size": self.batch_size, "part_seconds": self.part_seconds},
            **resources)
        with tqdm(total=sum(r["end"] - r["start"] for r in ranges), unit="rows", desc="scoring on Ray",
                  dynamic_ncols=True, disable=not self.progress) as bar:
            for result in scored.iter_rows():
                self.rows_by_actor[result["actor"]] = self.rows_by_actor.get(result["actor"], 0) + result["rows"]
                bar.update(result["rows"])
        self.actors = size
        return total

    def _rows_per_process(self) -> list[int]:
        """Rows scored by each actor (by the one that finished a range, when an actor died and was retried)."""
        counts = list(getattr(self, "rows_by_actor", {}).values())
        return counts + [0] * ((self.actors or 1) - len(counts))


class PartScorer:
    """A Ray Data actor of a run: scores each row range it is given into part files of the work directory.

    A range's parts already there (written before an actor died, or by an earlier driver) are kept: only the
    rest of the range is scored."""

    def __init__(self, scorer, work: str, features, batch_size: int, part_seconds: float):
        import ray

        self.writer = PartWriter(scorer, Path(work), features, batch_size, part_seconds)
        self.actor = ray.get_runtime_context().get_actor_id()
        scorer.engine()  # the model loads once per actor, on the device Ray gave it

    def __call__(self, batch: dict) -> dict[str, list]:
        out = {"actor": [], "rows": []}
        for start, end, blob in zip(batch["start"], batch["end"], batch["rows"]):
            start, end = int(start), int(end)
            rows = pickle.loads(blob)
            done = [(a, b) for a, b, _ in list_parts(self.writer.work) if a < end and b > start]
            for a, b in _missing(done, start, end):
                self.writer.score_range(rows, start, a, b)
            out["actor"].append(self.actor)
            out["rows"].append(end - start)
        return out
