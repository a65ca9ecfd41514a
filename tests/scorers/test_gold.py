import math

import datasets
import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.engine import Request, plan_batches
from hf_prospector.formats import batch_to_examples
from hf_prospector.models import load_causal_lm
from hf_prospector.scorers import GoldScorer
from tests.conftest import requires_smollm2
from tests.oracles import full_logits_logprobs

TASKS = {
    "instruction": ["Name the capital of France.", "Say hello.", "Translate to French.", "Repeat exactly: hello world"],
    "input": ["", "", "Where is the station?", ""],
    "output": ["Paris.", "hello there", "Où est la gare ?", "hello world"],
}
CANDIDATES = {
    "instruction": ["Give three tips for staying healthy.", "Write a haiku about autumn leaves.", "Empty one."],
    "input": ["", "", ""],
    "output": ["Eat well, sleep well and exercise regularly. " * 5, "Leaves fall slowly.", ""],
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path))
    return tmp_path


def full_logprob_sum(model, ids, start):
    return float(full_logits_logprobs(model, ids, start).sum())


def test_one_shot_from_reused_cache_equals_full_recomputation(tiny_model_dir, cache):
    scorer = GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(TASKS), dtype="float32")
    out = datasets.Dataset.from_dict(CANDIDATES).map(scorer, batched=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    for row in out.select(range(2)):
        candidate = [tok.bos_token_id] + ids(row["instruction"] + "\n") + ids(row["output"]) + ids("\n\n")
        wins, deltas = 0, []
        for ins, inp, ans in zip(TASKS["instruction"], TASKS["input"], TASKS["output"]):
            task = ids(ins + "\n" + (inp + "\n" if inp else "")) + ids(ans)
            zero_ids = [tok.bos_token_id] + task
            one_ids = candidate + task
            zero = full_logprob_sum(model, zero_ids, len(zero_ids) - len(ids(ans)))
            one = full_logprob_sum(model, one_ids, len(one_ids) - len(ids(ans)))
            wins += one > zero
            deltas.append((one - zero) / len(ids(ans)))  # zero-shot loss minus one-shot loss
        assert row["gold_wins"] == wins and row["n_tasks"] == 4
        assert row["gold_score"] == pytest.approx(wins / 4)
        assert row["gold_delta"] == pytest.approx(np.mean(deltas), abs=1e-4)
    empty = out[2]
    assert math.isnan(empty["gold_score"]) and "empty response" in empty["gold_note"]


def test_zero_shot_computed_once_per_task_set(tiny_model_dir, cache):
    tasks = datasets.Dataset.from_dict(TASKS)
    scorer = GoldScorer(str(tiny_model_dir), task_set=tasks, dtype="float32")
    cands = datasets.Dataset.from_dict(CANDIDATES)
    cands.map(scorer, batched=True, batch_size=1, load_from_cache_file=False)  # three calls
    assert scorer.zero_shot_runs == 1
    engine = scorer.engine()
    passes = engine.forward_passes
    scorer({k: v[:1] for k, v in CANDIDATES.items()})
    # One more candidate: one prefix pass plus the batched task passes, no zero-shot pass.
    task_lengths = [len(t.ids) for t in scorer.tasks(engine).tasks]
    assert engine.forward_passes - passes == 1 + len(plan_batches(task_lengths, engine.token_budget))
    again = GoldScorer(str(tiny_model_dir), task_set=tasks, dtype="float32")  # a new run: read from disk
    again({k: v[:1] for k, v in CANDIDATES.items()})
    assert again.zero_shot_runs == 0 and list((cache / "zero_shot").glob("*.npz"))


def test_truncation_notes_and_settings(tiny_model_dir, cache):
    scorer = GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(TASKS), dtype="float32",
                        max_length=40, task_max_length=12)
    row = scorer({k: v[:1] for k, v in CANDIDATES.items()})
    note = row["gold_note"][0]
    assert note.startswith("candidate: ") and "response cut to 16 of 150 tokens" in note
    assert "3 task(s) truncated" in note
    assert 0 <= row["gold_score"][0] <= 1
    with pytest.raises(ValueError, match="task_set"):
        GoldScorer(str(tiny_model_dir))
    with pytest.raises(ValueError, match="conflicts"):
        GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(TASKS), convention="nuggets",
                   template="alpaca")


def nuggets_reference(model, tok, candidate, tasks):
    """NUGGETS instruction_main.py, straightforwardly: one forward pass per (candidate, task).

    Returns (wins, mean over tasks of zero-shot minus one-shot mean answer loss)."""
    def prompt(ins, inp, out):
        q = f"Instruction:\n{ins.strip()}\n" + (f"Input:\n{inp.strip()}\n" if inp.strip() else "") + "Response:\n"
        return q, q + out.strip()

    ex_ids = tok(prompt(*candidate)[1]).input_ids  # the exemplar with the tokenizer's special tokens
    wins, deltas = 0, []
    for t in zip(*tasks):
        q, full = prompt(*t)
        ids = tok(full, add_special_tokens=False).input_ids[:200]
        start, end = len(tok(q, add_special_tokens=False).input_ids), min(len(ids), 200)
        zero = full_logprob_sum(model, ids[:end], start)
        one = full_logprob_sum(model, ex_ids + ids[:end], len(ex_ids) + start)
        wins += one > zero
        deltas.append((one - zero) / (end - start))
    return wins, float(np.mean(deltas))


def check_nuggets(model_name, model, tok, candidates):
    scorer = GoldScorer(model_name, task_set=datasets.Dataset.from_dict(TASKS), convention="nuggets",
                        dtype="float32")
    out = datasets.Dataset.from_dict(candidates).map(scorer, batched=True)
    tasks = (TASKS["instruction"], TASKS["input"], TASKS["output"])
    for i, row in enumerate(out):
        cand = (candidates["instruction"][i], candidates["input"][i], candidates["output"][i])
        wins, delta = nuggets_reference(model, tok, cand, tasks)
        assert row["gold_wins"] == wins and row["gold_delta"] == pytest.approx(delta, abs=1e-4)
    return out


def test_nuggets_convention_equals_reference(tiny_model_dir, cache):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = check_nuggets(str(tiny_model_dir), model, tok, CANDIDATES)
    assert "scored, as the NUGGETS script does" in out[2]["gold_note"]


@requires_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_nuggets_convention_equals_reference_on_smollm2(cache):
    model, tok = load_causal_lm()  # a fresh float32 copy: engines move models to their dtype in place
    check_nuggets(None, model, tok, {k: v[:2] for k, v in CANDIDATES.items()})


@requires_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_real_model_candidate_identical_to_task_wins_that_task(cache):
    scorer = GoldScorer(task_set=datasets.Dataset.from_dict(TASKS), dtype="float32")
    same = {k: [v[2]] for k, v in TASKS.items()}  # the French translation task itself, as a candidate
    row = scorer(same)
    engine = scorer.engine()
    encoder = scorer.encoder(engine)
    tasks, zero_sums = scorer.tasks(engine).tasks, scorer.tasks(engine).zero_sums
    prefix, _ = encoder.candidate(batch_to_examples(same)[0])
    one = engine.prefixed_logprobs(prefix, [Request(tasks[2].ids, tasks[2].start)])[0].sum()
    assert one > zero_sums[2] + 1.0  # the answer became clearly more likely: a win on that task
    assert 0 <= row["gold_score"][0] <= 1 and row["gold_score"][0] == row["gold_wins"][0] / row["n_tasks"][0]


def test_tasks_encoded_and_zero_shot_computed_once_over_map_batches(tiny_model_dir, cache, monkeypatch):
    from hf_prospector.encoders import ExactGoldEncoder

    encoded, built = [], []
    encode_task, build = ExactGoldEncoder.task, GoldScorer.build_encoder
    monkeypatch.setattr(ExactGoldEncoder, "task", lambda self, ex: encoded.append(ex) or encode_task(self, ex))
    monkeypatch.setattr(GoldScorer, "build_encoder", lambda self, engine: built.append(engine) or build(self, engine))
    tasks = datasets.Dataset.from_dict(TASKS)
    scorer = GoldScorer(str(tiny_model_dir), task_set=tasks, dtype="float32")
    datasets.Dataset.from_dict(CANDIDATES).map(scorer, batched=True, batch_size=1, load_from_cache_file=False)
    assert len(encoded) == len(tasks) and len(built) == 1 and scorer.zero_shot_runs == 1  # three batches
    gold = scorer.tasks(scorer.engine())
    assert gold is scorer.tasks(scorer.engine()) and [t.ids for t in gold.tasks] == [
        t.ids for t in map(scorer.encoder(scorer.engine()).task, batch_to_examples(TASKS))]
    # The disk cache is keyed by what the zero-shot pass sees: another convention encodes the tasks otherwise.
    nuggets = GoldScorer(str(tiny_model_dir), task_set=tasks, dtype="float32", convention="nuggets")
    nuggets({k: v[:1] for k, v in CANDIDATES.items()})
    assert nuggets.zero_shot_runs == 1 and len(list((cache / "zero_shot").glob("*.npz"))) == 2


def test_task_set_loads_on_first_need_and_once(tiny_model_dir, cache, tmp_path, monkeypatch):
    from datasets.fingerprint import Hasher

    import hf_prospector.scorers.gold as gold

    path = tmp_path / "tasks.jsonl"
    datasets.Dataset.from_dict(TASKS).to_json(str(path))
    loads = []
    load = gold.load_task_set
    monkeypatch.setattr(gold, "load_task_set", lambda source: loads.append(source) or load(source))
    scorer = GoldScorer(str(tiny_model_dir), task_set=str(path), dtype="float32")
    assert loads == []  # building the scorer checks its settings alone
    assert scorer.settings()["n_tasks"] == 4 and loads == [str(path)]
    Hasher.hash(scorer)
    scorer({k: v[:1] for k, v in CANDIDATES.items()})
    assert len(loads) == 1
    with pytest.raises(FileNotFoundError, match=r"the task set file .*missing\.jsonl does not exist"):
        GoldScorer(str(tiny_model_dir), task_set=str(tmp_path / "missing.jsonl"))


def test_chat_template_one_shot_from_reused_cache_equals_full_recomputation(tiny_model_dir, cache):
    """Under ``chat`` the candidate is a previous user/assistant exchange: the whole conversation rendered by the
    chat template and scored in one pass without the key/value cache gives the same score."""
    scorer = GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(TASKS), template="chat",
                        dtype="float32")
    out = datasets.Dataset.from_dict(CANDIDATES).map(scorer, batched=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    chat = lambda messages: tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # noqa: E731
    for row in out.select(range(2)):
        exchange = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        wins, deltas = 0, []
        for ins, inp, ans in zip(TASKS["instruction"], TASKS["input"], TASKS["output"]):
            task = [{"role": "user", "content": ins + ("\n" + inp if inp else "")}]
            zero_ids, one_ids = ids(chat(task)) + ids(ans), ids(chat(exchange + task)) + ids(ans)
            zero = full_logprob_sum(model, zero_ids, len(zero_ids) - len(ids(ans)))
            one = full_logprob_sum(model, one_ids, len(one_ids) - len(ids(ans)))
            wins += one > zero
            deltas.append((one - zero) / len(ids(ans)))
        assert row["gold_wins"] == wins and row["gold_score"] == pytest.approx(wins / 4)
        assert row["gold_delta"] == pytest.approx(np.mean(deltas), abs=1e-4)
        assert row["gold_note"] == ""
    assert math.isnan(out[2]["gold_score"]) and "empty response" in out[2]["gold_note"]
    # Not the plain template's numbers: the chat markup is in both passes.
    plain = datasets.Dataset.from_dict(CANDIDATES).map(
        GoldScorer(str(tiny_model_dir), task_set=datasets.Dataset.from_dict(TASKS), dtype="float32"), batched=True)
    assert plain["gold_delta"][:2] != out["gold_delta"][:2]


def test_chat_template_refused_with_a_hint_when_the_tokenizer_has_none(tiny_model_dir, tmp_path, cache):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    base = tmp_path / "base_model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(base)
    tok.save_pretrained(base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    scorer = GoldScorer(str(base), task_set=datasets.Dataset.from_dict(TASKS), template="chat", dtype="float32")
    with pytest.raises(ValueError, match="has none.*use template='plain' or 'alpaca'"):
        datasets.Dataset.from_dict(CANDIDATES).map(scorer, batched=True)
    from hf_prospector.scorers import IFDScorer

    with pytest.raises(ValueError, match="has none.*use template='plain' or 'alpaca'"):
        datasets.Dataset.from_dict(CANDIDATES).map(IFDScorer(str(base), template="chat"), batched=True)
