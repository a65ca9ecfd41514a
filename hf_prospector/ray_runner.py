"""Scoring on a Ray cluster: ``hf-prospector score ... --engine ray`` (recipe ``run.engine: ray``).

An input file (json/jsonl, parquet or csv, at a path every node can read or at an fsspec URL) is read by Ray Data
(``read_json``/``read_parquet``/``read_csv``, :class:`RayRows`) as tasks on the cluster, in the file's order, and
streamed to the driver a block of ``part_rows`` rows at a time; a Hub dataset, a saved dataset, the demo rows or a
``datasets.Dataset`` given in Python are read by ``datasets`` on the driver, as a local run reads them. The rows
still pass through the driver because the run is identified by row position: a row's ``row_id`` is its place in
the input, and each part records the hash of the input rows it covers, so that a re-run keeps only the parts whose
rows are unchanged; both need the rows in order, which one reader counting them gives. The driver sends the rows
on, range by range, to a pool of Ray actors (one per GPU, or ``cpus_per_actor`` CPUs each), at most
:data:`RANGES_PER_ACTOR` ranges per actor at a time: an input of any size passes through the driver a few ranges
at a time, and every actor has its next range waiting when it finishes one. Ray places the actors, and restarts
one that dies and retries its ranges; the run is otherwise :mod:`hf_prospector.runner`'s: the same blocks, the
same part files (written by the actors, each with the hash of its input rows), manifest, gather and summary. So
the output, its ``row_id`` s and a re-run are those of a single-process run: a re-run scores only the rows no part
holds, and a retried range keeps its parts already written.

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
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Iterator

from datasets import Dataset, Features, IterableDataset

from .runner import (DEFAULT_BATCH_SIZE, DEFAULT_PART_ROWS, DEFAULT_PART_SECONDS, PartWriter, RunSummary, _missing,
                     _overlap, _Run, check_run_options, execute, list_parts)
from .sources import _FILE_KINDS, DEMO_FILES, _json_error, exception_chain, local_path
from .storage import Place, is_url, secrets_hidden, shown
from .utils import require_int

INSTALL = "pip install 'hf_prospector[ray]'"
RANGES_PER_ACTOR = 2  # in flight per actor: the one it scores and the next, so that it never waits on the driver
CSV_TYPED_ROWS = 10_000  # datasets reads a CSV file in pandas chunks of this many rows: the first one types it


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


def score_run_ray(source: Dataset | IterableDataset | RayRows | str, scorer, output: str | Path, *, source_name: str,
                  batch_size: int = DEFAULT_BATCH_SIZE, part_rows: int = DEFAULT_PART_ROWS,
                  part_seconds: float = DEFAULT_PART_SECONDS, fresh: bool = False, overwrite: bool = False,
                  actors: int | None = None, cpus_per_actor: int = 1,
                  progress: bool = True) -> tuple[Dataset, RunSummary]:
    """:func:`hf_prospector.runner.score_run` on a Ray cluster: ``actors`` scorer actors (default: one per GPU
    of the cluster, else one per ``cpus_per_actor`` of its CPUs). ``source``: rows, or a json/jsonl/parquet/csv file
    (a path every node can read, or an fsspec URL) that Ray Data reads (:class:`RayRows`). ``output``: a path every
    node shares, or an fsspec URL. Call it once, from the driver."""
    check_run_options(batch_size, part_rows, part_seconds)
    if isinstance(source, str):
        source = RayRows(source)
    if actors is not None:
        require_int("actors", actors, 1)
    require_int("cpus_per_actor", cpus_per_actor, 1)
    connect()
    run = _RayRun(source, scorer, output, source_name, batch_size, part_rows, part_seconds, progress)
    run.actors, run.cpus_per_actor = actors, cpus_per_actor
    return execute(run, fresh, overwrite)


def ray_reads(source: str | None) -> bool:
    """Whether a Ray run reads ``source`` with Ray Data: a json/jsonl/parquet/csv file, at a local path or an fsspec
    URL. Other sources (a Hub dataset, a saved dataset, the demo rows) are read by ``datasets`` on the driver."""
    return _file_kind(source) is not None


def _file_kind(source: str | None) -> str | None:
    """``json``, ``parquet`` or ``csv`` for a data file (an existing local one, or any URL of one); else None. A
    JSON document that is one array of rows is no stream (any reader parses it whole): ``datasets`` reads it, as
    only its reader types the array's values as it types JSON lines."""
    if not source or source in DEMO_FILES:
        return None
    if is_url(source):
        kind = _FILE_KINDS.get(Path(source.split("?")[0]).suffix)
    else:
        path = local_path(source)
        kind = _FILE_KINDS.get(path.suffix) if path is not None and path.is_file() else None
    return None if kind == "json" and _json_array(source) else kind


def _json_array(where: str) -> bool:
    """Whether the JSON file ``where`` starts with ``[`` (False when it cannot be opened: reading it says why)."""
    try:
        if is_url(where):
            with Place(where).reading() as f:
                head = f.read(4096)
        else:
            with local_path(where).open("rb") as f:
                head = f.read(4096)
    except Exception:  # noqa: BLE001 -- missing or unreachable: RayRows names the problem
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


class RayRows:
    """A json/jsonl, parquet or csv file (a path every node can read, or an fsspec URL) read by Ray Data's reader as
    tasks on the cluster, in the file's order, ``batch_size`` rows at a time: a Ray run's input, streamed as the
    runner streams an ``IterableDataset``; ``limit``: only the first rows.

    The rows are those :func:`hf_prospector.sources.load_rows` gives: each batch is cast to the features ``datasets``
    reads the file with -- the file's schema for parquet; for JSON, the schema Ray's reader finds (pyarrow's JSON
    reader, which ``datasets`` uses too); for CSV, the types pandas gives the first :data:`CSV_TYPED_ROWS` rows, as
    ``datasets`` reads CSV with pandas (empty fields and ``NA`` are nulls, a column of integers with one is floats).
    So the row ids, blocks, part hashes and output columns are a single-process run's."""

    def __init__(self, source: str, *, limit: int | None = None):
        self.kind = _file_kind(source)
        if self.kind is None:
            raise ValueError(f"Ray Data reads a .json, .jsonl, .parquet or .csv file (an existing path, or a URL), "
                             f"not {shown(source)}")
        if limit is not None:
            require_int("limit", limit, 0)
        self.source, self.limit = source, limit
        self.where = source if is_url(source) else str(local_path(source).resolve())  # read tasks have another cwd

    def __repr__(self) -> str:
        return f"RayRows({shown(self.source)!r}{'' if self.limit is None else f', limit={self.limit}'})"

    @cached_property
    def features(self) -> Features:
        """The features ``datasets`` gives the file (read once, before its rows)."""
        with secrets_hidden(self.source):
            if not Place(self.where).is_file():
                raise FileNotFoundError(f"the input file {shown(self.source)} does not exist; check the URL")
            with self._read_errors():
                schema = self._schema()
        if schema is None:
            raise ValueError(f"the input file {shown(self.source)} is empty: it holds no rows")
        return Features.from_arrow_schema(schema)

    @property
    def column_names(self) -> list[str]:
        return list(self.features)

    def iter(self, batch_size: int) -> Iterator[dict[str, list]]:
        """The rows in the file's order, ``batch_size`` at a time (the last may be shorter), as columns of the values
        ``datasets`` gives."""
        from datasets.table import table_cast

        features, start = self.features, 0
        for table in self._tables(batch_size):
            try:
                table = table_cast(table, features.arrow_schema)
            except Exception as err:  # noqa: BLE001 -- any value that does not fit: say where
                raise ValueError(f"the input file {shown(self.source)} has rows in {start}..{start + table.num_rows} "
                                 f"that do not fit the column types of its first rows ({type(err).__name__}: "
                                 f"{str(err)[:300]}); give each column values of one type") from None
            yield features.decode_batch(table.to_pydict())
            start += table.num_rows

    def _tables(self, batch_size: int):
        """The file's rows as Arrow tables of ``batch_size`` rows, in order."""
        with self._read_errors():
            yield from self._dataset().iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=1)

    def _dataset(self):
        """The Ray dataset of the file's rows, in order."""
        import fsspec
        import ray.data

        read = {"json": ray.data.read_json, "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}[self.kind]
        options = {"convert_options": self._csv_options()} if self.kind == "csv" else {}
        filesystem, path = fsspec.core.url_to_fs(self.where) if is_url(self.where) else (None, self.where)
        # num_cpus=0: the scorer actors may hold every CPU, and reading is light beside scoring. No partitioning:
        # a folder named key=value in the path adds no column, as with datasets.
        ds = read(path, filesystem=filesystem, partitioning=None, file_extensions=None, num_cpus=0, **options)
        ds.context.execution_options.preserve_order = True
        ds.context.enable_progress_bars = False  # the run has its own
        return ds if self.limit is None else ds.limit(self.limit)

    def _schema(self):
        """The Arrow schema ``datasets`` reads the file with; None when the file is empty."""
        if self.kind == "parquet":  # its own (with the features datasets wrote there, if it did)
            import pyarrow.parquet as pq

            with Place(self.where).reading() as f:
                return pq.read_schema(f)
        if self.kind == "json":
            schema = self._dataset().schema()
            return None if schema is None else schema.base_schema
        import pandas as pd
        import pyarrow as pa

        with Place(self.where).reading() as f:
            try:
                first = pd.read_csv(f, nrows=CSV_TYPED_ROWS)
            except pd.errors.EmptyDataError:
                return None
        return pa.Schema.from_pandas(first, preserve_index=False)

    def _csv_options(self):
        """pyarrow's CSV options that read values as pandas does, into the types of the first rows."""
        from pandas._libs.parsers import STR_NA_VALUES
        from pyarrow import csv

        types = {name: field.type for name, field in zip(self.features, self.features.arrow_schema)}
        return csv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=sorted(STR_NA_VALUES),
                                  true_values=["True", "TRUE", "true"], false_values=["False", "FALSE", "false"])

    @contextmanager
    def _read_errors(self):
        """A failure to read the file (Ray's task errors wrap the reader's) as one that names it, with what to fix;
        a URL's credentials never shown."""
        with secrets_hidden(self.source):
            try:
                yield
            except Exception as err:  # noqa: BLE001 -- whatever the reader raised
                raise self._read_error(err) from err

    def _read_error(self, err: BaseException) -> ValueError:
        if self.kind == "json" and not is_url(self.where):
            if where := _json_error(Path(self.where)):
                return ValueError(f"the input file {shown(self.source)} is not valid JSON: {where}; fix that line")
            return ValueError(f"the input file {shown(self.source)} is valid JSON, but Ray Data's reader (pyarrow's) "
                              "cannot type its columns: a column holds values of different kinds (an object in one "
                              "row, a string in another); make each column one kind, or score it without --engine ray")
        # Ray wraps the reader's error in a task error (its cause) and a system one: name the reader's own.
        cause = next((e.cause for e in exception_chain(err) if isinstance(getattr(e, "cause", None), Exception)), err)
        cause = list(exception_chain(cause))[-1]
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        hint = (f"; each column's values must fit the type of its first {CSV_TYPED_ROWS:,} rows (datasets types a "
                "CSV file by them)" if self.kind == "csv" else "")
        return ValueError(f"cannot read the input file {shown(self.source)} with Ray Data: "
                          f"{type(cause).__name__}: {first}{hint}")


class _RayRun(_Run):
    """A run whose rows are scored by Ray actors; planning, checking and gathering stay the driver's."""

    actors: int | None = None
    cpus_per_actor: int = 1
    rows_by_actor: dict[str, int]

    def __init__(self, source, *args):
        super().__init__(source, *args)
        self.streaming = self.streaming or isinstance(source, RayRows)  # read in order, a block at a time

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
