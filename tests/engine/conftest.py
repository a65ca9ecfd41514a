"""The engine every test module here shares: the tiny model, float32, a budget that forces several micro-batches."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.engine import Engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64)
