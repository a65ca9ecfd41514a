import contextlib
import math
import pickle
import subprocess
import sys

import datasets
import multiprocess
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.formats import FormatError
from hf_prospector.scorers import IFD_COLUMNS, IFDScorer
from tests.oracles import full_logits_loss

ROWS = {
    "instruction": ["Give three tips for staying healthy.", "Translate the sentence into French.", "Say hi.",
                    "Write a haiku about autumn leaves and the long walk home through the quiet park at dusk.", "Empty."],
    "input": ["", "What is the capital of France?", None, "", ""],
    "output": ["Eat a balanced diet and exercise regularly. " * 6, "Paris.", "hello", "Leaves fall slowly.", ""],
}


@pytest.fixture(scope="module")
def alpaca():
    return datasets.Dataset.from_dict(ROWS)


def hand_loss(model, tok, prefix_text, response):
    """Mean NLL of the response after BOS + prefix, from one plain forward pass with full logits."""
    ctx = tok(prefix_text, add_special_tokens=False).input_ids if prefix_text else []
    resp = tok(response, add_special_tokens=False).input_ids
    return full_logits_loss(model, [tok.bos_token_id] + ctx + resp, 1 + len(ctx))


def test_scores_equal_independent_computation(tiny_model_dir, alpaca):
    out = alpaca.map(IFDScorer(str(tiny_model_dir), dtype="float32"), batched=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for i, row in enumerate(out.select(range(4))):
        context = row["instruction"] + "\n" + (row["input"] + "\n" if row["input"] else "")
        lc, lu = hand_loss(model, tok, context, row["output"]), hand_loss(model, tok, "", row["output"])
        assert row["loss_cond"] == pytest.approx(lc, abs=1e-4) and row["loss_uncond"] == pytest.approx(lu, abs=1e-4)
        assert row["ifd"] == pytest.approx(math.exp(lc) / math.exp(lu), rel=1e-4)
        assert row["ifd_loss"] == pytest.approx(lc / lu, rel=1e-4)
        assert row["ppl_cond"] == pytest.approx(math.exp(lc), rel=1e-4)
        assert row["ifd_note"] == ""


def test_batched_equals_one_row_at_a_time(tiny_model_dir, alpaca):
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32", token_budget=48)
    together = alpaca.map(scorer, batched=True, batch_size=100, load_from_cache_file=False)
    alone = alpaca.map(scorer, batched=True, batch_size=1, load_from_cache_file=False)
    for col in ("loss_cond", "loss_uncond", "ifd"):
        np.testing.assert_allclose(together[col], alone[col], atol=1e-4)
    assert together["n_response_tokens"] == alone["n_response_tokens"]


def test_freed_memory_released_after_every_map_batch(tiny_model_dir, alpaca, monkeypatch):
    from hf_prospector.engine import memory  # the engine hands memory back, at the end of each call

    calls = []
    monkeypatch.setattr(memory, "release_freed_memory",
                        lambda if_grown_by=0: calls.append(1) if not if_grown_by else None)
    alpaca.map(IFDScorer(str(tiny_model_dir), dtype="float32"), batched=True, batch_size=2, load_from_cache_file=False)
    assert len(calls) == 3  # 5 rows in batches of 2


def test_empty_response_kept_with_nan_and_reason(tiny_model_dir, alpaca):
    out = alpaca.map(IFDScorer(str(tiny_model_dir), dtype="float32"), batched=True)
    assert len(out) == len(alpaca) and set(IFD_COLUMNS) <= set(out.column_names)
    last = out[-1]
    assert math.isnan(last["ifd"]) and math.isnan(last["ppl_cond"]) and "empty response" in last["ifd_note"]


def test_every_format_and_template(tiny_model_dir):
    conv = [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "hello there"}]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "hello there"}]
    sets = {
        "sharegpt": datasets.Dataset.from_dict({"conversations": [conv]}),
        "messages": datasets.Dataset.from_dict({"messages": [msgs]}),
        "mapping": datasets.Dataset.from_dict({"q": ["Say hello."], "a": ["hello there"]}),
    }
    for template in ("plain", "alpaca", "chat"):
        for name, ds in sets.items():
            cols = {"instruction": "q", "response": "a"} if name == "mapping" else None
            row = ds.map(IFDScorer(str(tiny_model_dir), template=template, mapping=cols, dtype="float32"),
                         batched=True)[0]
            assert math.isfinite(row["ifd"]) and row["n_response_tokens"] > 0, (template, name)
    # ShareGPT and OpenAI messages carrying the same turns score the same under the chat template.
    a = sets["messages"].map(IFDScorer(str(tiny_model_dir), template="chat", dtype="float32"), batched=True)[0]
    conv_sys = [{"from": "system", "value": "Be brief."}] + conv
    b = datasets.Dataset.from_dict({"conversations": [conv_sys]}).map(
        IFDScorer(str(tiny_model_dir), template="chat", dtype="float32"), batched=True)[0]
    assert a["ifd"] == pytest.approx(b["ifd"], abs=1e-6)


def test_truncation_is_noted_and_counted(tiny_model_dir, alpaca):
    out = alpaca.map(IFDScorer(str(tiny_model_dir), max_length=32, min_response_tokens=8, dtype="float32"),
                     batched=True)
    first, haiku = out[0], out[3]
    assert "response cut to" in first["ifd_note"] and math.isfinite(first["ifd"])
    assert first["n_response_tokens"] < 32
    # The haiku's instruction alone overflows 32 tokens: the context is cut from the left, leaving the response
    # its min_response_tokens (then cut to them).
    n_response = len(AutoTokenizer.from_pretrained(tiny_model_dir)(haiku["output"], add_special_tokens=False).input_ids)
    assert "context cut from the left" in haiku["ifd_note"] and math.isfinite(haiku["ifd"])
    assert haiku["n_response_tokens"] == min(8, n_response)


def test_bad_input_errors(tiny_model_dir):
    scorer = IFDScorer(str(tiny_model_dir))
    with pytest.raises(FormatError, match="columns found|columns"):
        datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).map(scorer, batched=True)
    with pytest.raises(FormatError, match=r"row 1 of this batch \(.*with_indices=True\), column 'instruction'"):
        scorer({"instruction": ["ok", 3.5], "output": ["a", "b"]})
    with pytest.raises(FormatError, match="row_id 8, column 'output'"):  # row_id names the row when present
        scorer({"instruction": ["ok", "ok"], "output": ["a", None], "row_id": [7, 8]})


def test_unknown_settings_rejected():
    with pytest.raises(ValueError, match="template"):
        IFDScorer(template="fancy")
    with pytest.raises(ValueError, match="turn"):
        IFDScorer(turn="middle")


FINGERPRINT = ("from datasets.fingerprint import Hasher; from hf_prospector.scorers import IFDScorer; "
               "print(Hasher.hash(IFDScorer('{m}', template='alpaca', max_length=512)))")


def test_fingerprint_stable_across_processes_and_without_weights(tiny_model_dir, alpaca):
    from datasets.fingerprint import Hasher

    scorer = IFDScorer(str(tiny_model_dir), template="alpaca", max_length=512)
    before = Hasher.hash(scorer)
    alpaca.select(range(1)).map(scorer, batched=True)  # loads the model
    assert Hasher.hash(scorer) == before
    other = subprocess.run([sys.executable, "-c", FINGERPRINT.format(m=tiny_model_dir)], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert other == before
    assert Hasher.hash(IFDScorer(str(tiny_model_dir), template="plain", max_length=512)) != before


@contextlib.contextmanager
def workers_that_can_use_cuda():
    """Where a GPU scores, spawn the map's workers, as the scorer's error tells users: CUDA cannot start again in
    a process forked from one that used it (here the single-process run)."""
    if not torch.cuda.is_available():
        yield
        return
    before = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(before, force=True)


# Forked workers inherit the warning filters: a worker whose compiler fails (and falls back) fails the test.
@pytest.mark.filterwarnings("error:torch.compile is not used")
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_with_rank_num_proc_equals_single_process(tiny_model_dir, alpaca, compile):
    single = alpaca.map(IFDScorer(str(tiny_model_dir), dtype="float32"), batched=True, load_from_cache_file=False)
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32", compile=compile)  # each worker compiles its own
    with workers_that_can_use_cuda():
        multi = alpaca.map(scorer, batched=True, with_rank=True, num_proc=2, batch_size=2, load_from_cache_file=False)
    for col in ("loss_cond", "loss_uncond", "ifd"):
        np.testing.assert_allclose(multi[col], single[col], atol=1e-5, equal_nan=True)
    assert multi["ifd_note"] == single["ifd_note"]


def test_a_forked_worker_without_cuda_is_told_to_spawn(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)  # what CUDA reports in such a worker
    scorer = IFDScorer(str(tiny_model_dir))
    scorer.device = "cuda"  # as built in a parent process that has a GPU
    with pytest.raises(RuntimeError, match="set_start_method\\('spawn'"):
        scorer.engine(rank=1)


def test_encoder_built_once_over_map_batches_and_never_pickled(tiny_model_dir, alpaca, monkeypatch):
    """The chat template's assistant header is derived once per engine, not once per map batch."""
    import hf_prospector.encoders.exact as exact

    headers = []
    derive = exact.assistant_header
    monkeypatch.setattr(exact, "assistant_header", lambda tok: headers.append(tok) or derive(tok))
    scorer = IFDScorer(str(tiny_model_dir), template="chat", dtype="float32")
    alpaca.map(scorer, batched=True, batch_size=2, load_from_cache_file=False)  # 5 rows: three batches
    assert len(headers) == 1
    engine = scorer.engine()
    assert scorer.encoder(engine) is scorer.encoder(engine) and scorer.encoder(engine).tokenizer is engine.tokenizer
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy._per_engine == {} and copy._engines == {}
    scorer.template = "alpaca"  # a setting changed after use builds the encoder anew
    changed = alpaca.map(scorer, batched=True, load_from_cache_file=False)
    fresh = alpaca.map(IFDScorer(str(tiny_model_dir), template="alpaca", dtype="float32"), batched=True)
    np.testing.assert_allclose(changed["ifd"], fresh["ifd"], rtol=1e-6)


def test_mapping_keyword_and_the_deprecated_columns(tiny_model_dir):
    rows = datasets.Dataset.from_dict({"q": ["Say hello."], "a": ["hello there"]})
    layout = {"instruction": "q", "response": "a"}
    scorer = IFDScorer(str(tiny_model_dir), mapping=layout, dtype="float32")
    with pytest.warns(DeprecationWarning, match="columns= is now mapping=") as caught:
        old = IFDScorer(str(tiny_model_dir), columns=layout, dtype="float32")
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert old.mapping == scorer.mapping and old.settings() == scorer.settings()
    assert scorer.settings()["mapping"] == {"instruction": "q", "response": "a", "input": None}
    assert rows.map(old, batched=True)["ifd"] == rows.map(scorer, batched=True)["ifd"]
    with pytest.raises(ValueError, match="give mapping= only"):
        IFDScorer(mapping=layout, columns=layout)
    assert scorer.score_columns == IFD_COLUMNS and not hasattr(scorer, "columns")


def test_options_are_keyword_only(tiny_model_dir):
    from hf_prospector.scorers import GoldScorer

    with pytest.raises(TypeError, match="positional"):
        IFDScorer(str(tiny_model_dir), "cherry")
    with pytest.raises(TypeError, match="positional"):
        GoldScorer(str(tiny_model_dir), datasets.Dataset.from_dict(ROWS))
