"""Where rows come from: a Hub id, a json/jsonl/parquet/csv file (local or a URL), a saved dataset, or the demo rows.

A source that looks like a local path (a data-file suffix, ``./``, ``../``, ``/`` or ``~`` in front, or a
first folder that exists here) is read from disk only: when it is missing, that is a FileNotFoundError
naming it, never a Hub lookup. A Hub source that cannot be reached is a :class:`HubUnreachableError`
naming the endpoint and whether offline mode is on.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Iterator

DEMO_FILES = {"demo": "data/demo_alpaca.jsonl", "demo-chat": "data/demo_chat.jsonl"}
_FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_PATH_STARTS = ("./", "../", "/", "~", ".\\", "..\\")


class HubUnreachableError(ConnectionError):
    """The Hub endpoint could not be reached (offline mode, or no network); the message names the endpoint."""


def hub_unreachable(action: str, url: str | None = None) -> HubUnreachableError:
    """The error for ``action`` (e.g. "load 'user/rows' from the Hub") failing to reach the Hub (or ``url``)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        mode = "offline mode is on (HF_HUB_OFFLINE=1): unset it to go online, or use a local file"
    else:
        mode = "offline mode is off: check the network, or point HF_ENDPOINT at a reachable server"
    where = url or f"the Hub endpoint {constants.ENDPOINT}"
    return HubUnreachableError(f"cannot {action}: {where} was not reached; {mode}")


def exception_chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, each once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_connection_error(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception chained to it is a failure to connect (refused, offline, DNS, timeout)."""
    # httpx(2)'s transport errors are not OSErrors; match them by their base class's name.
    return any(isinstance(e, (ConnectionError, TimeoutError)) or any(c.__name__ == "TransportError"
                                                                     for c in type(e).__mro__)
               for e in exception_chain(err))


def local_path(source: str, suffixes=tuple(_FILE_KINDS)) -> Path | None:
    """The path ``source`` names when it is to be read from disk (existing or not); None for a Hub id or URL.
    A name ending in one of ``suffixes`` (files of the kind expected: data files, or models' ``.gguf``) is a path."""
    if source in DEMO_FILES or "://" in source:
        return None
    path = Path(source).expanduser()
    first = Path(source).parts[0] if Path(source).parts else ""
    if (path.exists() or path.suffix in suffixes or source.startswith(_PATH_STARTS)
            or (os.sep in source and first and Path(first).is_dir())):
        return path
    return None


def load_rows(source: str | None, *, split: str = "train", streaming: bool = False, what: str = "input"):
    """Load ``source`` as a Dataset (an IterableDataset with ``streaming=True``); ``None`` = the demo rows.

    ``what`` names the source in errors (``input``, ``task set``).
    """
    import datasets

    source = source or "demo"
    if source in DEMO_FILES:
        source = str(resources.files("hf_prospector") / DEMO_FILES[source])
    suffix = Path(source.split("?")[0]).suffix
    web = "://" in source
    path = local_path(source)
    if path is None:
        try:
            if web and suffix in _FILE_KINDS:  # a data file at a URL (http, s3://, any fsspec protocol)
                return datasets.load_dataset(_FILE_KINDS[suffix], data_files=source, split="train", streaming=streaming)
            return datasets.load_dataset(source, split=split, streaming=streaming)
        except Exception as err:
            if is_connection_error(err):
                raise (hub_unreachable(f"download the {what}", url=source) if web else
                       hub_unreachable(f"load the {what} {source!r} from the Hub")) from err
            raise
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(path))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return ds.to_iterable_dataset() if streaming else ds
    if path.is_file():
        return _load_file(path, streaming, what)
    if path.exists():
        raise FileNotFoundError(f"the {what} {source} is a folder but not a saved dataset (no dataset_info.json "
                                "or dataset_dict.json); "
                                "give a .json, .jsonl, .parquet or .csv file, or a folder written by save_to_disk")
    raise FileNotFoundError(f"the {what} file {source} does not exist (read as a local path, not a Hub id); "
                            "check the path")


def _load_file(path: Path, streaming: bool, what: str):
    """A json/jsonl/parquet/csv file; an empty file or invalid JSON is a ValueError naming the file (and line)."""
    import datasets

    kind = _FILE_KINDS.get(path.suffix)
    if kind is None:
        raise ValueError(f"cannot read the {what} {path}: use a .json, .jsonl, .parquet or .csv file, "
                         "or a saved dataset")
    with path.open("rb") as f:
        head = f.read(4096)
    if not head.strip() and path.stat().st_size <= len(head):
        raise ValueError(f"the {what} file {path} is empty: it holds no rows")
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train", streaming=streaming)
    except Exception as err:
        if kind == "json" and (where := _json_error(path)):
            raise ValueError(f"the {what} file {path} is not valid JSON: {where}; fix that line") from err
        if "corresponds to no data" in str(err):
            if kind == "parquet":  # zero rows, but typed columns: datasets cannot read it, pyarrow can
                import pyarrow.parquet as pq

                ds = datasets.Dataset(pq.read_table(path))
                return ds.to_iterable_dataset() if streaming else ds
            raise ValueError(f"the {what} file {path} holds no rows") from err
        cause = err.__cause__ or err.__context__
        if isinstance(err, datasets.exceptions.DatasetGenerationError) and cause is not None:
            raise ValueError(f"cannot read the {what} file {path}: {type(cause).__name__}: {cause}") from err
        raise


def _json_error(path: Path) -> str | None:
    """Where a JSON document or JSON-lines file first fails to parse (``line N: why``); None when it parses."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        if whole.msg != "Extra data":  # not several values: the document itself is broken
            return f"line {whole.lineno}, column {whole.colno}: {whole.msg}"
    for number, line in enumerate(text.splitlines(), 1):  # JSON lines: one value per line
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}, column {err.colno}: {err.msg}"
    return None


def save_rows(ds, path: str | Path, parquet: bool | None = None) -> None:
    """A ``.parquet`` file (by default when ``path`` ends so), or a saved-dataset folder; either loads back with
    :func:`load_rows`, even with 0 rows."""
    if str(path).endswith(".parquet") if parquet is None else parquet:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path), num_shards=1 if len(ds) == 0 else None)  # 0 shards would not load back
