"""Scoring on a Ray cluster: ``hf-prospector score ... --engine ray`` (recipe ``run.engine: ray``).

The driver streams the input's row ranges to a pool of Ray actors (one per GPU, or ``cpus_per_actor`` CPUs each),
at most :data:`RANGES_PER_ACTOR` ranges per actor at a time: an input of any size passes through the driver a few
ranges at a time, and every actor has its next range waiting when it finishes one. Ray places the actors, and
restarts one that dies and retries its ranges; the run is otherwise :mod:`hf_prospector.runner`'s: the same
blocks, the same part files (written by the actors, each with the hash of its input rows), manifest, gather and
summary. So the output, its ``row_id`` s and a re-run are those of a single-process run: a re-run scores only the
rows no part holds, and a retried range keeps its parts already written.

The cluster is ``RAY_ADDRESS`` when set (every node needs ``hf_prospector`` and the model), else a local one.
The output, and the work directory beside it, must be where every node can write: a shared filesystem, or an
fsspec URL (``s3://bucket/scored.parquet``, ``gs://...``) with its credentials set on every node (the actors write
the parts there themselves).

Ray Data's own checkpointing (``DataContext.checkpoint_config``, beta) records finished row ids only: it cannot
tell a row whose input or scorer settings changed since from a finished one, which the parts' input hashes and
the manifest do; so the parts are what a re-run resumes from.

The scorers are Ray Data UDFs too, without this module:
``ds.map_batches(IFDScorer, fn_constructor_kwargs={"model": ...}, concurrency=2, batch_format="pyarrow")``
(see :meth:`hf_prospector.scorers.base.Scorer.__call__`).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, IterableDataset

from .runner import (DEFAULT_BATCH_SIZE, DEFAULT_PART_ROWS, DEFAULT_PART_SECONDS, PartWriter, RunSummary, _missing,
                     _overlap, _Run, check_run_options, execute, list_parts)
from .utils import require_int

INSTALL = "pip install 'hf_prospector[ray]'"
RANGES_PER_ACTOR = 2  # in flight per actor: the one it scores and the next, so that it never waits on the driver


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
    of the cluster, else one per ``cpus_per_actor`` of its CPUs). ``output``: a path every node shares, or an
    fsspec URL. Call it once, from the driver."""
    check_run_options(batch_size, part_rows, part_seconds)
    if actors is not None:
        require_int("actors", actors, 1)
    require_int("cpus_per_actor", cpus_per_actor, 1)
    connect()
    run = _RayRun(source, scorer, output, source_name, batch_size, part_rows, part_seconds, progress)
    run.actors, run.cpus_per_actor = actors, cpus_per_actor
    return execute(run, fresh, overwrite)


class _RayRun(_Run):
    """A run whose rows are scored by Ray actors; planning, checking and gathering stay the driver's."""

    actors: int | None = None
    cpus_per_actor: int = 1
    rows_by_actor: dict[str, int]

    def _score_my_blocks(self) -> int:
        """Send each missing range to the actors as they have room for it; returns the input's row count."""
        import ray
        from tqdm.auto import tqdm

        done = [(a, b) for a, b, _ in self._parts()]
        bounds = None if self.streaming else self._block_bounds(len(self.source))
        self.rows_by_actor = {}
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pool = _Actors(ray, self.actors or (gpus if gpus else max(1, cpus // self.cpus_per_actor)),
                       {"num_gpus": 1} if gpus else {"num_cpus": self.cpus_per_actor},
                       {"scorer": self.scorer, "work": self.work.where, "features": self._features(),
                        "batch_size": self.batch_size, "part_seconds": self.part_seconds})
        with tqdm(total=None if bounds is None else sum(e - s for s, e in bounds),
                  initial=0 if bounds is None else sum(_overlap(done, s, e) for s, e in bounds),
                  unit="rows", desc="scoring on Ray", dynamic_ncols=True, disable=not self.progress) as bar:
            def scored(actor: str, rows: int) -> None:
                self.rows_by_actor[actor] = self.rows_by_actor.get(actor, 0) + rows
                bar.update(rows)

            try:
                for block_start, block_end, read in self._my_blocks():  # one process: every block
                    todo = _missing(done, block_start, block_end)
                    rows = read() if todo else {}
                    for a, b in todo:
                        pool.send(a, b, {k: v[a - block_start: b - block_start] for k, v in rows.items()}, scored)
                pool.wait_all(scored)
            finally:
                pool.close()
        if pool.started:
            self.actors = pool.started
        return self.stream_rows if self.streaming else len(self.source)

    def _rows_per_process(self) -> list[int]:
        """Rows scored by each actor (by the one that finished a range, when an actor died and was retried)."""
        counts = list(getattr(self, "rows_by_actor", {}).values())
        return counts + [0] * ((self.actors or 1) - len(counts))


class _Actors:
    """Up to ``size`` :class:`PartScorer` actors, started as ranges come (a short input starts fewer), each sent at
    most :data:`RANGES_PER_ACTOR` ranges ahead: :meth:`send` waits for a range to finish when all are busy, so
    the driver never holds more ranges than that. Ray restarts an actor that dies and retries its ranges
    (``max_restarts``, ``max_task_retries``)."""

    def __init__(self, ray, size: int, resources: dict, kwargs: dict):
        self.ray, self.size, self.kwargs = ray, size, kwargs
        self.actor_class = ray.remote(PartScorer).options(max_restarts=-1, max_task_retries=-1, **resources)
        self.actors, self.load, self.in_flight = [], [], {}  # in_flight: a range's result -> its actor's index

    @property
    def started(self) -> int:
        return len(self.actors)

    def send(self, start: int, end: int, rows: dict[str, list], on_scored) -> None:
        """Send rows ``start:end`` to the least busy actor, once one has room (starting one when all are busy)."""
        while True:
            if len(self.actors) < self.size and all(self.load):
                self.actors.append(self.actor_class.remote(**self.kwargs))
                self.load.append(0)
            index = min(range(len(self.actors)), key=self.load.__getitem__)
            if self.load[index] < RANGES_PER_ACTOR:
                break
            self._wait_one(on_scored)
        self.in_flight[self.actors[index].score.remote(start, end, rows)] = index
        self.load[index] += 1

    def wait_all(self, on_scored) -> None:
        while self.in_flight:
            self._wait_one(on_scored)

    def _wait_one(self, on_scored) -> None:
        (ready,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
        self.load[self.in_flight.pop(ready)] -= 1
        on_scored(*self.ray.get(ready))

    def close(self) -> None:
        """End the actors (after a failure or Ctrl-C too): they hold a device each."""
        for actor in self.actors:
            self.ray.kill(actor)


class PartScorer:
    """A Ray actor of a run: scores each row range it is given into part files of the work directory (a path or
    a URL).

    A range's parts already there (written before an actor died, or by an earlier driver) are kept: only the
    rest of the range is scored."""

    def __init__(self, scorer, work: str | Path, features, batch_size: int, part_seconds: float):
        import ray

        self.writer = PartWriter(scorer, work, features, batch_size, part_seconds)
        self.actor = ray.get_runtime_context().get_actor_id()
        scorer.engine()  # the model loads once per actor, on the device Ray gave it

    def score(self, start: int, end: int, rows: dict[str, list]) -> tuple[str, int]:
        """Score rows ``start:end`` (``rows``, as columns) but those already in parts; ``(this actor, end - start)``."""
        done = [(a, b) for a, b, _ in list_parts(self.writer.work) if a < end and b > start]
        for a, b in _missing(done, start, end):
            self.writer.score_range(rows, start, a, b)
        return self.actor, end - start
