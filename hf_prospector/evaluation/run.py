"""Run the evidence: fine-tune each arm, evaluate it and the untuned base, compare, report; resumable per arm.

Each arm's result is written to ``<out_dir>/arms/<arm>/manifest.json`` under a key that hashes everything that
changes it (training settings, encoding, the base model's fingerprint, the exact training ids, the evaluation ids,
library and trainer versions, device and dtype): a rerun after a crash, or with another arm added, reuses every
arm whose key matches and trains only the others.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from datasets import Dataset

from .. import __version__
from ..engine import Engine
from ..formats import ColumnMapping
from ..models import load_causal_lm, model_fingerprint
from ..scorers.base import pick_device, within_window
from ..utils import atomic_write
from .compare import comparisons, write_report
from .data import (Encoding, as_train_dataset, check_sizes, encode_set, overlap, training_rows)
from .generation import GenerationMetrics, generate_answers, load_metrics, metric_values
from .scoring import eval_losses
from .training import TrainSettings, fine_tune, require

BASE = "base"


def run_evidence(arms: Mapping[str, Dataset], eval_set: Dataset | Mapping[str, Dataset], out_dir: str | Path, *, base_model: str | None = None,
                 settings: TrainSettings | None = None, encoding: Encoding | None = None, baseline: str = "random",
                 rows: int | None = None, tokens: int | None = None, equal_size: bool = True,
                 mapping: ColumnMapping | dict | None = None, eval_mapping: ColumnMapping | dict | None = None,
                 turn: str = "last", device: str | None = None, dtype: str = "float32", draws: int = 10000,
                 ci_seed: int = 0, generation: GenerationMetrics | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``base_model`` on each arm (named training sets), evaluate every tuned model and the base on
    ``eval_set`` (instruction, reference response; or several, named: ``{"gpt4": ds1, "alpaca_eval": ds2}``), compare
    with ``baseline`` per evaluation set and write the report to ``out_dir``.

    ``rows=N``: each arm trains on its first N rows; ``tokens=N``: on its first rows holding at most N response
    tokens; neither: arms as given, which must be of equal size unless ``equal_size=False``. ``generation``: also
    compare the models' greedy answers with the references by ``evaluate`` metrics (e.g. ROUGE-L; slow on a CPU).
    Returns the result (also ``evidence.json``).
    """
    settings = settings or TrainSettings()
    encoding = encoding or Encoding()
    require("trl", *(["peft"] if settings.lora else []))
    if not arms:
        raise ValueError("no arms given; pass {name: dataset} with at least one training set")
    if BASE in arms:
        raise ValueError(f"arm name {BASE!r} is reserved for the untuned base model; rename that arm")
    mapping = ColumnMapping(**mapping) if isinstance(mapping, dict) else mapping
    eval_mapping = ColumnMapping(**eval_mapping) if isinstance(eval_mapping, dict) else eval_mapping
    device = pick_device(device, None)
    out = Path(out_dir)
    metrics = load_metrics(generation.metrics) if generation else {}

    eval_sets = {"eval": eval_set} if isinstance(eval_set, Dataset) else dict(eval_set)
    if not eval_sets:
        raise ValueError("no evaluation set given; pass a dataset of (instruction, reference response) rows")
    model, tokenizer = load_causal_lm(base_model)
    engine = Engine(model, tokenizer, device, dtype)
    max_length, budget = within_window(encoding.max_length, engine)
    evaluated = {}
    for set_name, ds in eval_sets.items():
        evaluated[set_name] = encode_set(ds, f"evaluation set {set_name!r}", tokenizer, encoding, eval_mapping, turn,
                                         max_length, budget)
        if not evaluated[set_name].ids:
            unusable = evaluated[set_name].unusable
            raise ValueError(f"evaluation set {set_name!r} has no usable row ({len(unusable)} unusable: "
                             f"{sorted(set(unusable.values()))[:3]})")
    trained = {name: training_rows(encode_set(ds, f"arm {name!r}", tokenizer, encoding, mapping, turn, max_length,
                                              budget), name, rows, tokens) for name, ds in arms.items()}
    check_sizes(trained, equal_size and rows is None and tokens is None)
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overlaps = {name: {set_name: overlap(enc, ev, name, set_name) for set_name, ev in evaluated.items()}
                    for name, enc in trained.items()}
    for w in caught:
        found.append(str(w.message))
        warnings.warn(w.message, stacklevel=2)

    def evaluate(engine: Engine) -> dict[str, np.ndarray]:
        return {set_name: eval_losses(engine, ev) for set_name, ev in evaluated.items()}

    def generated(engine: Engine) -> dict:
        """Per evaluation set, the generation metrics of the engine's model (empty without ``generation``)."""
        if not generation:
            return {}
        return {"generation": {set_name: metric_values(metrics, *generate_answers(engine.model, tokenizer, ev,
                                                                                    generation))
                               for set_name, ev in evaluated.items()}}

    common = {"library": __version__, "base_model": base_model, "fingerprint": model_fingerprint(base_model),
              "encoding": vars(encoding), "eval": {n: ev.digest() for n, ev in evaluated.items()}, "device": device,
              "dtype": dtype, "generation": generation.to_dict() if generation else None}
    results, losses = {}, {}
    base_key = _key({**common, "arm": BASE})
    results[BASE], losses[BASE] = _cached(out, BASE, base_key) or _save(out, BASE, base_key, {
        "rows": 0, "training_tokens": 0, "mean_response_tokens": None, "unusable_rows": 0, **generated(engine)},
        evaluate(engine))
    del engine, model
    for name, enc in trained.items():
        versions = {m: _version(m) for m in ("transformers", "trl", "torch")}
        key = _key({**common, "arm": enc.digest(), "settings": settings.to_dict(), "versions": versions})
        cached = _cached(out, name, key)
        if cached:
            log(f"arm {name}: already trained and evaluated with these settings ({_arm_dir(out, name)})")
        else:
            log(f"arm {name}: fine-tuning on {len(enc.ids)} rows ({sum(enc.response_tokens)} response tokens)")
            started = time.perf_counter()
            model, tokenizer = load_causal_lm(base_model)  # a fresh copy of the base for every arm
            tuned, history = fine_tune(model, tokenizer, as_train_dataset(enc), settings, device)
            tuned_engine = Engine(tuned, tokenizer, device, dtype)
            arm_losses = evaluate(tuned_engine)
            cached = _save(out, name, key, {**generated(tuned_engine),
                "rows": len(enc.ids), "training_tokens": int(sum(enc.response_tokens)),
                "mean_response_tokens": float(np.mean(enc.response_tokens)), "unusable_rows": len(enc.unusable),
                "train_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
                "seconds": round(time.perf_counter() - started, 1)}, arm_losses)
        results[name], losses[name] = cached
        results[name]["eval_overlap"] = overlaps[name]

    result = {"base_model": base_model or "smollm2-135m", "settings": settings.to_dict(), "encoding": vars(encoding),
              "eval_rows": {n: len(ev.ids) for n, ev in evaluated.items()},
              "eval_unusable": {n: len(ev.unusable) for n, ev in evaluated.items()}, "arms": results,
              "generation": generation.to_dict() if generation else None,
              "comparison": {set_name: comparisons({arm: per_set[set_name] for arm, per_set in losses.items()},
                                                   baseline, draws, ci_seed) for set_name in evaluated},
              "warnings": found}
    result["files"] = {k: str(p) for k, p in write_report(result, out).items()}
    return result


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _arm_dir(out: Path, name: str) -> Path:
    return out / "arms" / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _cached(out: Path, name: str, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """A finished arm's (stats, eval losses) when its manifest has this key; None otherwise (or when unreadable)."""
    path = _arm_dir(out, name) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("arm") != name:
        return None
    return manifest["stats"], {n: np.array(v, dtype=np.float64) for n, v in manifest["eval_losses"].items()}


def _save(out: Path, name: str, key: str, stats: dict, losses: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Write the arm's manifest atomically (a crash leaves the old one or none, never half of one)."""
    folder = _arm_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"arm": name, "key": key, "stats": stats, "eval_losses": {n: v.tolist() for n, v in losses.items()}}
    atomic_write(folder / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest)))
    return dict(stats), losses
