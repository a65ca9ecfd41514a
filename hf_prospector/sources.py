"""Where rows come from: a Hub id, a json/jsonl/parquet/csv file (local or a URL), a saved dataset, or the demo rows."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_FILES = {"demo": "data/demo_alpaca.jsonl", "demo-chat": "data/demo_chat.jsonl"}
_FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source: str | None, split: str = "train", streaming: bool = False):
    """Load ``source`` as a Dataset (an IterableDataset with ``streaming=True``); ``None`` = the demo rows."""
    import datasets

    source = source or "demo"
    if source in DEMO_FILES:
        source = str(resources.files("hf_prospector") / DEMO_FILES[source])
    suffix = Path(source.split("?")[0]).suffix
    if source.startswith(("http://", "https://")) and suffix in _FILE_KINDS:  # a data file on the web
        return datasets.load_dataset(_FILE_KINDS[suffix], data_files=source, split="train", streaming=streaming)
    path = Path(source)
    if path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return ds.to_iterable_dataset() if streaming else ds
    if path.is_file():
        kind = _FILE_KINDS.get(path.suffix)
        if kind is None:
            raise ValueError(f"cannot read {path}: use a .json, .jsonl, .parquet or .csv file, or a saved dataset")
        return datasets.load_dataset(kind, data_files=str(path), split="train", streaming=streaming)
    if path.exists() or source.startswith((".", "/")):
        raise FileNotFoundError(f"{source}: not a data file or a saved dataset")
    return datasets.load_dataset(source, split=split, streaming=streaming)
