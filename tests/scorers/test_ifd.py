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


def test_a_cpu_worker_runs_one_thread_and_compiles_for_one(tiny_model_dir, monkeypatch):
    """A forked worker's OpenMP pool and compile-worker pool are the parent's: on torch 2.7 a kernel compiled for the
    parent's thread count, or a compile sent to the parent's pool, hangs there. A rank's engine runs one thread,
    for eager and compiled code alike, and compiles in-process."""
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "threads", -1)  # inductor's default: torch's thread count
    monkeypatch.setattr(inductor_config, "compile_threads", 2)  # a pool of compile workers, forked with the parent
    threads = torch.get_num_threads()
    try:
        IFDScorer(str(tiny_model_dir)).engine(rank=0)
        assert (torch.get_num_threads(), inductor_config.cpp.threads, inductor_config.compile_threads) == (1, 1, 1)
    finally:
        torch.set_num_threads(threads)


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


# -- turn="all": every assistant turn ---------------------------------------------------------------------------
CHATS = [
    [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "hello there"},
     {"role": "user", "content": "Translate the sentence into French."},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "Write a haiku about autumn leaves."},
     {"role": "assistant", "content": "Leaves fall slowly, hello world."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Give three tips for staying healthy."},
     {"role": "assistant", "content": "Eat a balanced diet and exercise regularly."}],
    [{"role": "user", "content": "Repeat exactly: the quick brown fox."}, {"role": "assistant", "content": "the quick brown fox"},
     {"role": "user", "content": "Again."}, {"role": "assistant", "content": "the quick brown fox jumps"}],
]


def turn_losses(model, tok, messages, template):
    """Each assistant turn scored alone with its whole history: [(loss_cond, loss_uncond, tokens)], by hand."""
    out = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        resp = tok(m["content"], add_special_tokens=False).input_ids
        if template == "plain":
            context = "".join(t["content"] + "\n" for t in messages[:k])
            cond = [tok.bos_token_id] + tok(context, add_special_tokens=False).input_ids + resp
            uncond = [tok.bos_token_id] + resp
        else:
            context = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            cond = tok(context, add_special_tokens=False).input_ids + resp
            uncond = tok("<s>assistant\n", add_special_tokens=False).input_ids + resp
        losses = []
        for ids in (cond, uncond):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            losses.append(-np.mean([lp[p - 1, ids[p]].item() for p in range(len(ids) - len(resp), len(ids))]))
        out.append((*losses, len(resp)))
    return out


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_turn_all_equals_each_turn_scored_alone_with_its_history(tiny_model_dir, template):
    ds = datasets.Dataset.from_dict({"messages": CHATS})
    out = ds.map(IFDScorer(str(tiny_model_dir), template=template, turn="all", dtype="float32"), batched=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row, messages in zip(out, CHATS):
        turns = turn_losses(model, tok, messages, template)
        n = sum(t[2] for t in turns)
        cond, uncond = (sum(t[side] * t[2] for t in turns) / n for side in (0, 1))  # weighted by tokens
        assert row["loss_cond"] == pytest.approx(cond, abs=1e-4) and row["loss_uncond"] == pytest.approx(uncond, abs=1e-4)
        assert row["ifd"] == pytest.approx(math.exp(cond - uncond), rel=1e-4)
        assert row["ifd_loss"] == pytest.approx(cond / uncond, rel=1e-4)
        assert row["n_response_tokens"] == n and row["n_response_tokens_turns"] == [t[2] for t in turns]
        np.testing.assert_allclose(row["loss_cond_turns"], [t[0] for t in turns], atol=1e-4)
        np.testing.assert_allclose(row["ifd_turns"], [math.exp(t[0] - t[1]) for t in turns], rtol=1e-4)
        assert row["ifd_note"] == ""


def test_turn_all_equals_turn_last_on_single_turn_rows(tiny_model_dir, alpaca):
    single = datasets.Dataset.from_dict({"messages": [CHATS[1], CHATS[1][1:]]})
    for ds in (alpaca, single):
        last = ds.map(IFDScorer(str(tiny_model_dir), dtype="float32"), batched=True)
        every = ds.map(IFDScorer(str(tiny_model_dir), turn="all", dtype="float32"), batched=True)
        for c in IFD_COLUMNS:  # bit for bit, notes included
            assert every[c] == last[c] or np.array_equal(every[c], last[c], equal_nan=True), c
        np.testing.assert_array_equal(np.array(every["ifd_turns"]).ravel(), every["ifd"])


def test_turn_all_batched_equals_one_at_a_time_with_one_engine_call_per_batch(tiny_model_dir, monkeypatch):
    ds = datasets.Dataset.from_dict({"messages": CHATS * 2})
    scorer = IFDScorer(str(tiny_model_dir), turn="all", dtype="float32", token_budget=48)
    engine = scorer.engine()
    calls = []
    logprobs = engine.logprobs
    monkeypatch.setattr(engine, "logprobs", lambda requests: calls.append(len(requests)) or logprobs(requests))
    together = ds.map(scorer, batched=True, batch_size=100, load_from_cache_file=False)
    assert calls == [2 * (3 + 1 + 2) * 2]  # every turn of every row, both passes, in one call
    alone = ds.map(scorer, batched=True, batch_size=1, load_from_cache_file=False)
    for col in ("loss_cond", "loss_uncond", "ifd"):
        np.testing.assert_allclose(together[col], alone[col], atol=1e-4)
    np.testing.assert_allclose(np.concatenate(together["ifd_turns"]), np.concatenate(alone["ifd_turns"]), atol=1e-4)
    assert together["n_response_tokens_turns"] == alone["n_response_tokens_turns"]


def test_turn_all_truncation_says_which_turns_were_cut_or_lost(tiny_model_dir):
    ds = datasets.Dataset.from_dict({"messages": [CHATS[0]]})
    row = ds.map(IFDScorer(str(tiny_model_dir), turn="all", max_length=24, min_response_tokens=0, dtype="float32"),
                 batched=True)[0]
    # The third answer's history fills the budget: that turn loses its score, the first keeps it.
    assert math.isfinite(row["ifd_turns"][0]) and math.isnan(row["ifd_turns"][-1])
    assert row["n_response_tokens_turns"][-1] == 0 and row["n_response_tokens"] == sum(row["n_response_tokens_turns"])
    assert "turn 5: NaN: context of" in row["ifd_note"] and math.isfinite(row["ifd"])
    cut = ds.map(IFDScorer(str(tiny_model_dir), turn="all", max_length=24, min_response_tokens=4, dtype="float32"),
                 batched=True)[0]
    assert "turn 5: context cut from the left" in cut["ifd_note"] and all(map(math.isfinite, cut["ifd_turns"]))


def test_turn_all_columns_are_typed_lists_and_gold_refuses_it(tiny_model_dir, alpaca):
    from datasets import List, Value

    from hf_prospector.scorers import GoldScorer

    scorer = IFDScorer(str(tiny_model_dir), turn="all", dtype="float32")
    assert scorer.score_columns[:len(IFD_COLUMNS)] == IFD_COLUMNS and "ifd_turns" in scorer.score_columns
    assert IFDScorer(str(tiny_model_dir)).score_columns == IFD_COLUMNS  # turn="last" adds nothing
    empty = scorer.score(alpaca.select([]))
    assert empty.features["ifd_turns"] == List(Value("float64"))
    assert empty.features["n_response_tokens_turns"] == List(Value("int64"))
    assert scorer.settings()["turn"] == "all" and scorer.settings() != IFDScorer(str(tiny_model_dir)).settings()
    with pytest.raises(ValueError, match="turn='all'"):
        GoldScorer(str(tiny_model_dir), turn="all", task_set=alpaca)


@pytest.mark.shared_data
@pytest.mark.parametrize("name, key, role", [("sharegpt_500.json", "conversations", "from"),
                                             ("messages_300.json", "messages", "role")])
def test_turn_all_on_real_chat_data_through_the_runner(tiny_model_dir, shared_data, tmp_path, name, key, role):
    from hf_prospector.runner import score_run

    ds = datasets.load_dataset("json", data_files=str(shared_data / name), split="train")
    # Every row with 3 or more assistant turns, and single-turn rows, as far as 48 rows.
    answers = [sum(t[role] in ("gpt", "assistant") for t in turns) for turns in ds[key]]
    ds = ds.select(sorted([i for i, n in enumerate(answers) if n >= 3][:32] + [answers.index(1)]))
    answers = [sum(t[role] in ("gpt", "assistant") for t in turns) for turns in ds[key]]
    scorer = IFDScorer(str(tiny_model_dir), turn="all", max_length=256, dtype="float32")
    out, summary = score_run(ds, scorer, tmp_path / "scored.parquet", source_name=name, batch_size=8, part_rows=12,
                             progress=False)
    assert out.features["ifd_turns"] == datasets.List(datasets.Value("float64"))
    assert [len(t) for t in out["ifd_turns"]] == answers
    assert out["n_response_tokens"] == [sum(n) for n in out["n_response_tokens_turns"]]
    assert summary.rows == len(ds) and np.isfinite(out["ifd"]).all()
    # A row's IFD comes from the same tokens as its turns: its loss is their token-weighted mean.
    for row in out.select(range(5)):
        n = np.array(row["n_response_tokens_turns"])
        assert row["loss_cond"] == pytest.approx(np.nansum(np.array(row["loss_cond_turns"]) * n) / n.sum(), rel=1e-5)
    last = ds.map(IFDScorer(str(tiny_model_dir), max_length=256, dtype="float32"), batched=True)
    one = answers.index(1)
    assert out[one]["ifd"] == last[one]["ifd"] and out[one]["ifd_turns"][-1] == out[one]["ifd"]
