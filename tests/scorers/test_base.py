"""What a scorer refuses or records instead of returning a wrong number: stale weights, rows past the model's
context window, settings that cannot work, and empty datasets."""

import math

import datasets
import numpy as np
import pytest
import torch
from datasets.fingerprint import Hasher
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.scorers import GoldScorer, IFDScorer
from hf_prospector.scorers.base import within_window
from hf_prospector.selection import select, superfiltering
from tests.tiny import build_tiny_model

ROWS = {"instruction": ["Give three tips for staying healthy.", "Translate the sentence into French."],
        "input": ["", "hello world"], "output": ["Eat a balanced diet and exercise regularly.", "Bonjour le monde."]}


def cached_rows(tmp_path) -> datasets.Dataset:
    """Rows backed by a cache file, so that Dataset.map results are cached on disk and served by fingerprint."""
    path = tmp_path / "rows.jsonl"
    datasets.Dataset.from_dict(ROWS).to_json(str(path))
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf_cache"))


@pytest.mark.slow
def test_model_retrained_into_the_same_folder_is_not_served_from_the_cache(tmp_path):
    folder = build_tiny_model(tmp_path / "model", seed=0)
    rows = cached_rows(tmp_path)
    first = rows.map(IFDScorer(str(folder), dtype="float32"), batched=True)
    build_tiny_model(folder, seed=1)  # "retrained": other weights at the same path
    second = rows.map(IFDScorer(str(folder), dtype="float32"), batched=True)
    fresh = datasets.Dataset.from_dict(ROWS).map(IFDScorer(str(folder), dtype="float32"), batched=True)
    np.testing.assert_allclose(second["loss_cond"], fresh["loss_cond"], rtol=1e-6)
    assert not np.allclose(first["loss_cond"], second["loss_cond"])


def test_settings_name_the_weights_and_stay_equal_without_a_change(tmp_path):
    folder = build_tiny_model(tmp_path / "model", seed=0)
    a, b = IFDScorer(str(folder)), IFDScorer(str(folder))
    assert a.settings() == b.settings() and a.settings()["model_fingerprint"].startswith("files:")
    build_tiny_model(folder, seed=1)
    assert IFDScorer(str(folder)).settings()["model_fingerprint"] != a.settings()["model_fingerprint"]


def test_golden_zero_shot_cache_is_recomputed_for_new_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path / "cache"))
    folder = build_tiny_model(tmp_path / "model", seed=0)
    tasks = datasets.Dataset.from_dict(ROWS)
    candidates = datasets.Dataset.from_dict({k: v[:1] for k, v in ROWS.items()})
    first = GoldScorer(str(folder), task_set=tasks, dtype="float32")
    candidates.map(first, batched=True)
    assert first.zero_shot_runs == 1
    again = GoldScorer(str(folder), task_set=tasks, dtype="float32")
    candidates.map(again, batched=True, load_from_cache_file=False)
    assert again.zero_shot_runs == 0  # same weights: from the disk cache
    build_tiny_model(folder, seed=1)
    retrained = GoldScorer(str(folder), task_set=tasks, dtype="float32")
    candidates.map(retrained, batched=True, load_from_cache_file=False)
    assert retrained.zero_shot_runs == 1


def long_row(tokenizer, n_tokens: int) -> dict:
    words = "hello world there helpful " * (n_tokens // 2)
    ids = tokenizer(words, add_special_tokens=False).input_ids[:n_tokens]
    return {"instruction": ["Repeat exactly:"], "input": [""], "output": [tokenizer.decode(ids)]}


@pytest.mark.slow
def test_rows_longer_than_the_context_window_are_cut_to_it_with_a_note(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    window = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.max_position_embeddings
    rows = datasets.Dataset.from_dict(long_row(tokenizer, window + 500))
    out = rows.map(IFDScorer(str(tiny_model_dir), dtype="float32", max_length=10**9), batched=True)[0]
    context = len(tokenizer("Repeat exactly:\n", add_special_tokens=False).input_ids)
    assert out["n_response_tokens"] == window - 1 - context  # BOS + context + response = the window
    assert f"context window of {window} tokens" in out["ifd_note"] and "max_length=1000000000" in out["ifd_note"]
    assert math.isfinite(out["ifd"])
    # Asking for the window itself gives the same scores, with the plain note.
    same = rows.map(IFDScorer(str(tiny_model_dir), dtype="float32", max_length=window), batched=True)[0]
    assert same["loss_cond"] == pytest.approx(out["loss_cond"], abs=1e-5)
    assert "context window" not in same["ifd_note"] and f"max_length={window}" in same["ifd_note"]


@pytest.mark.parametrize("convention", ["superfiltering", "cherry"])
def test_paper_conventions_are_capped_at_the_window_too(tiny_model_dir, convention):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = datasets.Dataset.from_dict(long_row(tokenizer, 2600))
    out = rows.map(IFDScorer(str(tiny_model_dir), convention=convention, dtype="float32", max_length=10**6),
                   batched=True)[0]
    assert "context window of 2048 tokens" in out["ifd_note"]
    assert out["n_response_tokens"] < 2048


def test_golden_score_budget_is_capped_at_the_window():
    class Engine:
        context_window = 512

    assert within_window(1024, Engine()) == (512, "the model's context window of 512 tokens (max_length=1024 was asked)")
    assert within_window(256, Engine()) == (256, "max_length=256")
    Engine.context_window = None
    assert within_window(10**9, Engine()) == (10**9, "max_length=1000000000")


@pytest.mark.parametrize("kwargs, words", [
    ({"max_length": 10**9 * 1.5}, "max_length must be an integer >= 2"),
    ({"max_length": "512"}, "max_length must be an integer >= 2, got '512'"),
    ({"max_length": 1}, "max_length must be an integer >= 2, got 1"),
    ({"max_length": True}, "max_length must be an integer"),
    ({"min_response_tokens": -1}, "min_response_tokens must be an integer >= 0, got -1"),
    ({"token_budget": 0}, "token_budget must be an integer >= 1, got 0"),
    ({"token_budget": 2.5}, "token_budget must be an integer >= 1"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"device": "gpu:0"}, "device='gpu:0' is not a device torch knows"),
])
def test_bad_ifd_settings_are_refused_when_built(tiny_model_dir, kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        IFDScorer(str(tiny_model_dir), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_when_built(tiny_model_dir):
    with pytest.raises(ValueError, match="device='cuda' but torch sees no GPU"):
        IFDScorer(str(tiny_model_dir), device="cuda")


@pytest.mark.parametrize("kwargs, words", [
    ({"max_length": 256, "task_max_length": 256}, "task_max_length=256 leaves no room for a candidate within max_length=256"),
    ({"max_length": 100, "task_max_length": 200}, "task_max_length=200 leaves no room"),
    ({"task_max_length": 0}, "task_max_length must be an integer >= 2, got 0"),
    ({"max_length": "1024"}, "max_length must be an integer >= 4"),
])
def test_bad_gold_settings_are_refused_before_the_model_loads(tiny_model_dir, kwargs, words, monkeypatch):
    monkeypatch.setattr("hf_prospector.scorers.base.load_causal_lm", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(ValueError, match=words):
        GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(ROWS), **kwargs)


def test_empty_dataset_keeps_typed_score_columns(tiny_model_dir):
    empty = datasets.Dataset.from_dict(ROWS).select([])
    scored = IFDScorer(str(tiny_model_dir)).score(empty)
    assert len(scored) == 0 and scored.features == datasets.Features(
        {**datasets.Dataset.from_dict(ROWS).features, **IFDScorer.features})
    kept, report = select(scored, superfiltering(0.05))  # the next step works: nothing to keep
    assert len(kept) == 0 and report.considered == 0
    gold = GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(ROWS)).score(empty)
    assert gold.features["gold_score"] == datasets.Value("float64") and gold.features["gold_wins"] == datasets.Value("int64")


def test_score_equals_map_and_names_dataset_rows(tiny_model_dir):
    rows = datasets.Dataset.from_dict(ROWS)
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32")
    np.testing.assert_allclose(scorer.score(rows, batch_size=1)["ifd"], rows.map(scorer, batched=True)["ifd"], rtol=1e-6)


def test_a_changed_task_file_is_not_served_from_the_datasets_cache(tmp_path, tiny_model_dir, monkeypatch):
    """The task set loads lazily, but the scorer's fingerprint still hashes its content: a task file edited in place
    gets new scores, not the cached ones."""
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tasks.jsonl"
    datasets.Dataset.from_dict(ROWS).to_json(str(path))
    scorer = lambda: GoldScorer(str(tiny_model_dir), task_set=str(path), dtype="float32")  # noqa: E731
    rows = cached_rows(tmp_path)
    before = Hasher.hash(scorer())  # nothing scored or loaded yet
    first = rows.map(scorer(), batched=True)
    assert Hasher.hash(scorer()) == before  # the same tasks: the same fingerprint
    datasets.Dataset.from_dict({**ROWS, "output": ["Rest, water and sleep.", "Salut tout le monde."]}).to_json(str(path))
    assert Hasher.hash(scorer()) != before
    second = rows.map(scorer(), batched=True)
    fresh = datasets.Dataset.from_dict(ROWS).map(scorer(), batched=True)
    np.testing.assert_allclose(second["gold_delta"], fresh["gold_delta"], rtol=1e-6)
    assert not np.allclose(first["gold_delta"], second["gold_delta"])


def test_score_tells_compile_auto_the_rows_left_without_changing_the_fingerprint(tiny_model_dir, monkeypatch):
    """``score()`` knows the row count: after each batch the compiler hears how many rows remain, so a run too short
    to repay a compile stays eager. The plan is this process's, not a setting: the fingerprint ignores it."""
    from hf_prospector.engine.compilation import DeferredCompiler

    told = []
    monkeypatch.setattr(DeferredCompiler, "expect", lambda self, scored, left: told.append((scored, left)))
    rows = datasets.Dataset.from_dict({k: v * 3 for k, v in ROWS.items()}).select(range(5))
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32")
    before = Hasher.hash(scorer)
    scorer.score(rows, batch_size=2, load_from_cache_file=False)
    assert told == [(2, 3), (2, 1), (1, 0)]
    scorer.expect_rows(10)
    assert Hasher.hash(scorer) == before
    told.clear()
    scorer.expect_rows(None)
    rows.map(scorer, batched=True, batch_size=2, load_from_cache_file=False)  # ds.map alone: not told
    assert told == []
    with pytest.raises(ValueError, match="rows"):
        scorer.expect_rows(-1)
