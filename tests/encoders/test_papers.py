"""Paper conventions: IFDScorer(convention=...) reproduces the papers' scripts, row for row."""

import itertools
import json
import math
import shutil
from importlib import resources

import datasets
import pytest
from datasets.fingerprint import Hasher
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.paper_reference import CHERRY_PROMPT, SUPERFILTERING_PROMPT, cherry_row, prompt, superfiltering_row
from hf_prospector.publishing.card import make_card
from hf_prospector.scorers import IFDScorer
from tests.oracles import full_logits_logprobs
from tests.tiny import build_tiny_model

REFERENCES = {"superfiltering": superfiltering_row, "cherry": cherry_row}

ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat a balanced diet and exercise regularly."},
    {"instruction": "Translate the sentence into French.", "input": "What is the capital of France?",
     "output": "The capital of France is Paris."},
    {"instruction": "Summarize the following paragraph in one sentence.",
     "input": "hello world, hello there, helpful hello.", "output": "Hello there, said the fox. " * 12},
    {"instruction": "Write a haiku about autumn leaves. " * 10, "input": "", "output": "Leaves fall slowly."},
    {"instruction": "Say hi.", "input": "", "output": "hello"},  # one token for the tiny tokenizer
    {"instruction": "Empty.", "input": "", "output": ""},
    {"instruction": "Repeat exactly: the quick brown fox.", "input": "", "output": " the quick brown fox."},
    {"instruction": "What is the capital of France?", "input": "Answer briefly.", "output": "\nParis."},
]
EMPTY = [5]


def score(model_dir, rows, **settings):
    ds = datasets.Dataset.from_list(rows)
    return ds.map(IFDScorer(model_dir, dtype="float32", **settings), batched=True, load_from_cache_file=False)


def assert_matches_reference(scored, model, tokenizer, convention, max_length):
    """Every IFD column equals the script's, and the script's NaN rows are NaN here (with a reason)."""
    for i, row in enumerate(scored):
        ref = REFERENCES[convention](model, tokenizer, row, max_length)
        lc, lu = ref["loss_cond"], ref["loss_uncond"]
        if math.isnan(lc) or math.isnan(lu):
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_loss"]), (i, row)
            assert row["ifd_note"].startswith("NaN: "), (i, row["ifd_note"])
            continue
        expected = {"loss_cond": lc, "loss_uncond": lu, "ifd": math.exp(lc - lu), "ifd_loss": lc / lu}
        for column in ("loss_cond", "loss_uncond"):
            assert abs(row[column] - expected[column]) < 1e-4, (i, column, row[column], expected[column])
        for column in ("ifd", "ifd_loss"):  # ratios of the losses: compared relatively, as exp(.) scales the error
            assert math.isclose(row[column], expected[column], rel_tol=2e-4), (i, column, row[column], expected[column])


@pytest.fixture(scope="module")
def bos_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a tokenizer that adds ``<s>`` by itself, as LLaMA's does."""
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path_factory.mktemp("tiny_bos")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder)
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder)("hello").input_ids[0] == tok.bos_token_id
    return folder


@pytest.fixture(scope="module")
def no_bos_model_dir(tmp_path_factory):
    """The tiny model with a tokenizer that has no BOS at all, as GPT-2's adds none."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_no_bos"), bos=False)


# Default budgets, and small ones that cut responses and leave prompts no room (the tiny tokenizer
# spends many tokens on a text; test_tiny_budgets_reach_the_edge_cases checks what each budget reaches).
TINY_CASES = [("superfiltering", None), ("superfiltering", 40), ("cherry", None), ("cherry", 96), ("cherry", 150)]


@pytest.mark.parametrize("convention,max_length", TINY_CASES)
@pytest.mark.parametrize("tokenizer_kind", ["adds_no_bos", "adds_bos"])
def test_tiny_model_equals_script_reference(convention, max_length, tokenizer_kind, tiny_model_dir, bos_model_dir):
    folder = str(tiny_model_dir if tokenizer_kind == "adds_no_bos" else bos_model_dir)
    scored = score(folder, ROWS, convention=convention, max_length=max_length)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    length = max_length or {"superfiltering": 1024, "cherry": 512}[convention]
    assert_matches_reference(scored, model, tokenizer, convention, length)
    assert sum(math.isfinite(v) for v in scored["ifd"]) >= 2  # not a comparison of NaNs


def test_tiny_budgets_reach_the_edge_cases(tiny_model_dir):
    folder = str(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(folder)
    n_prompt = {name: [len(tok(prompt(templates, row)).input_ids) for row in ROWS]
                for name, templates in (("superfiltering", SUPERFILTERING_PROMPT), ("cherry", CHERRY_PROMPT))}
    superfiltering = score(folder, ROWS, convention="superfiltering", max_length=40)["ifd_note"]
    assert superfiltering[2] == f"response cut to {40 - n_prompt['superfiltering'][2]} tokens by max_length=40"
    assert superfiltering[3].startswith("NaN: the prompt") and n_prompt["superfiltering"][3] > 40
    assert superfiltering[4].startswith("NaN: the response alone is one token")
    cherry = score(folder, ROWS, convention="cherry", max_length=96)["ifd_note"]
    assert cherry[0] == f"response cut to {96 - n_prompt['cherry'][0]} tokens by max_length=96"
    assert cherry[1] == "NaN: the prompt fills max_length=96 (the Cherry scripts skip the row)"
    assert score(folder, ROWS, convention="cherry", max_length=150)["ifd_note"][2].startswith("response cut to")


def test_cherry_keeps_rows_with_ifd_above_one(tiny_model_dir):
    ifd_loss = score(str(tiny_model_dir), ROWS, convention="cherry")["ifd_loss"]
    assert any(v > 1 for v in ifd_loss if math.isfinite(v))


def test_first_response_token_exact_versus_superfiltering(no_bos_model_dir):
    """Without BOS, exact leaves the first response token out of both passes; Superfiltering scores it in
    the conditioned pass only. The unconditioned passes then score the same tokens."""
    folder = str(no_bos_model_dir)
    rows = ROWS[:2]
    exact = score(folder, rows, convention="exact")
    paper = score(folder, rows, convention="superfiltering")
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for e, p, row in zip(exact, paper, rows):
        assert p["n_response_tokens"] == e["n_response_tokens"] + 1
        assert p["loss_uncond"] == pytest.approx(e["loss_uncond"], abs=1e-5)
        # The conditioned sums differ by exactly the first response token's loss given the prompt.
        prompt = row["instruction"] + "\n" + (row["input"] + "\n" if row["input"] else "")
        ids = tok(prompt + row["output"]).input_ids
        n_prompt = len(tok(prompt).input_ids)
        first = -full_logits_logprobs(model, ids, n_prompt)[0]
        difference = p["loss_cond"] * p["n_response_tokens"] - e["loss_cond"] * e["n_response_tokens"]
        assert difference == pytest.approx(first, abs=1e-4)
        assert abs(p["ifd"] - e["ifd"]) > 1e-3


def test_every_convention_gives_nan_for_the_same_empty_responses(tiny_model_dir):
    scored = {c: score(str(tiny_model_dir), ROWS, convention=c) for c in ("exact", "superfiltering", "cherry")}
    for convention, ds in scored.items():
        for i in EMPTY:
            assert math.isnan(ds[i]["ifd"]) and ds[i]["ifd_note"] == "NaN: empty response", convention
    # Otherwise the conventions score different things: no two give the same IFD on a row.
    for i in (0, 1, 6):
        values = [scored[c][i]["ifd"] for c in scored]
        assert min(abs(a - b) for a, b in itertools.combinations(values, 2)) > 1e-4, values


@pytest.mark.parametrize("convention", ["superfiltering", "cherry"])
def test_chat_rows_score_like_the_same_alpaca_rows(convention, tiny_model_dir):
    """A single-turn conversation is an instruction without input, so it gets the Alpaca row's scores."""
    rows = [r for r in ROWS[:5] if not r["input"]]
    conversations = [[{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}] for r in rows]
    alpaca = score(str(tiny_model_dir), rows, convention=convention)
    chat = score(str(tiny_model_dir), [{"conversations": c} for c in conversations], convention=convention)
    assert alpaca["ifd_note"] == chat["ifd_note"]
    for column in ("loss_cond", "loss_uncond"):
        assert alpaca[column] == pytest.approx(chat[column], abs=1e-6, nan_ok=True)


def test_defaults_conflicts_and_settings():
    settings = {c: IFDScorer(convention=c).settings() for c in ("exact", "superfiltering", "cherry")}
    assert {c: (s["convention"], s["template"], s["max_length"], s["min_response_tokens"])
            for c, s in settings.items()} == {"exact": ("exact", "plain", 1024, 16),
                                              "superfiltering": ("superfiltering", "plain", 1024, None),
                                              "cherry": ("cherry", "alpaca", 512, None)}
    assert IFDScorer(convention="cherry", template="alpaca", max_length=1024).max_length == 1024
    assert IFDScorer(template="alpaca", max_length=256, min_response_tokens=4).settings()["template"] == "alpaca"
    with pytest.raises(ValueError, match=r"convention='cherry' uses template 'alpaca', but template='plain'"):
        IFDScorer(convention="cherry", template="plain")
    with pytest.raises(ValueError, match=r"convention='superfiltering' uses template 'plain', but template='chat'"):
        IFDScorer(convention="superfiltering", template="chat")
    with pytest.raises(ValueError, match="min_response_tokens applies to convention='exact'"):
        IFDScorer(convention="superfiltering", min_response_tokens=8)
    with pytest.raises(ValueError, match=r"unknown convention 'nuggets'.*'exact', 'superfiltering', 'cherry'"):
        IFDScorer(convention="nuggets")


def test_convention_in_fingerprint_and_card(tiny_model_dir, tmp_path):
    hashes = {c: Hasher.hash(IFDScorer(str(tiny_model_dir), convention=c, max_length=512))
              for c in ("exact", "superfiltering", "cherry")}
    assert len(set(hashes.values())) == 3
    assert Hasher.hash(IFDScorer(str(tiny_model_dir), convention="cherry")) == hashes["cherry"]  # 512 is its default
    scorer = IFDScorer(str(tiny_model_dir), convention="superfiltering", dtype="float32")
    scored = datasets.Dataset.from_list(ROWS[:2]).map(scorer, batched=True)
    card = make_card(scored, tmp_path, provenance=scorer.settings())
    assert "| convention | superfiltering |" in str(card)


# -- the real SmolLM2-135M ---------------------------------------------------------------------------------------
def real_rows(shared_dir):
    """Seven real rows (with and without input), plus an empty, a leading-space and a long output."""
    path = shared_dir / "alpaca_52k.json" if shared_dir is not None else None
    if path is not None and path.exists():
        rows = json.loads(path.read_text())[:7]
    else:
        text = resources.files("hf_prospector").joinpath("data/demo_alpaca.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines()][:7]
    rows = [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in rows]
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    long_output = "\n\n".join(r["output"] for r in rows[:4])
    return rows + [{"instruction": "Name a colour.", "input": "", "output": ""},
                   {"instruction": "Name a colour.", "input": "", "output": " Blue, like the sky."},
                   {"instruction": "Answer the four questions.", "input": "", "output": long_output}]


@pytest.fixture(scope="module")
def real(request):
    try:
        shared_dir = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared_dir = None
    return real_rows(shared_dir)


@pytest.mark.real_model
@pytest.mark.parametrize("convention", ["superfiltering", "cherry"])
@pytest.mark.parametrize("max_length", [None, 96])
@pytest.mark.slow
def test_smollm2_equals_script_reference(convention, max_length, smollm2, real):
    model, tokenizer = smollm2
    scored = score(None, real, convention=convention, max_length=max_length)
    length = max_length or {"superfiltering": 1024, "cherry": 512}[convention]
    assert_matches_reference(scored, model, tokenizer, convention, length)
    assert scored[-3]["ifd_note"] == "NaN: empty response"
    assert sum(math.isfinite(v) for v in scored["ifd"]) >= 3  # not a comparison of NaNs
    if max_length == 96:
        # Cherry's +4 budget skips cut rows where "### Response:" encodes to under 4 tokens (SmolLM2: 3, or 4 with
        # the BOS that transformers < 5 adds to GGUF tokenizers); otherwise it keeps them, cut.
        header = len(tokenizer.encode("### Response:"))
        expected = "response cut to" if convention == "superfiltering" or header >= 4 else "plus unconditioned response"
        assert any(expected in note for note in scored["ifd_note"])
