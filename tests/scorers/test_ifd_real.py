"""The real SmolLM2-135M on real rows: the scores mean what IFD should mean."""

import json
from importlib import resources

import datasets
import pytest
from scipy.stats import spearmanr

from hf_prospector.scorers import IFDScorer
from tests.conftest import SHARED_DATA, requires_smollm2

pytestmark = [requires_smollm2, pytest.mark.real_model]


def demo_rows():
    text = resources.files("hf_prospector").joinpath("data/demo_alpaca.jsonl").read_text()
    return datasets.Dataset.from_list([json.loads(line) for line in text.splitlines()])


@pytest.mark.slow
def test_repeat_is_far_below_one_and_unrelated_is_near_or_above_one():
    rows = datasets.Dataset.from_dict({
        "instruction": ["Repeat exactly: The old lighthouse keeper painted the door bright green.",
                        "Name the largest ocean on Earth.", "Write a haiku about autumn."],
        "output": ["The old lighthouse keeper painted the door bright green.",
                   "My favourite football team won the league last season after a dramatic final match.",
                   "The mitochondria is the powerhouse of the cell and produces most of its ATP."],
    })
    # SmolLM2-135M-Instruct is a chat model: under its chat template an unrelated answer does not get
    # easier to predict from the question (IFD >= ~1), while a repeated text becomes nearly certain.
    chat = rows.map(IFDScorer(template="chat", dtype="float32"), batched=True)["ifd"]
    assert chat[0] < 0.2
    assert chat[1] > 0.9 and chat[2] > 0.9
    plain = rows.map(IFDScorer(dtype="float32"), batched=True)["ifd"]
    assert plain[0] < 0.1 and min(plain[1:]) > 5 * plain[0]


def real_rows(n=96):
    if (SHARED_DATA / "alpaca_52k.json").exists():
        ds = datasets.load_dataset("json", data_files=str(SHARED_DATA / "alpaca_52k.json"), split="train")
        return ds.select(range(n))
    return demo_rows()


@pytest.mark.slow
def test_bfloat16_ranks_like_float32():
    rows = real_rows()
    f32 = rows.map(IFDScorer(dtype="float32"), batched=True)["ifd"]
    bf16 = rows.map(IFDScorer(dtype="bfloat16"), batched=True)["ifd"]
    pairs = [(a, b) for a, b in zip(f32, bf16) if a == a]
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    assert rho >= 0.995, rho
