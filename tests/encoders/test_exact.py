"""The exact IFD encoder: templates, token boundaries, the cuts a budget forces, NaN with a reason."""

import pytest

from hf_prospector.encoders import ALPACA_PROMPT, PairEncoder, render_context
from hf_prospector.formats import batch_to_examples
from tests.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def ex(instruction, output, input_=""):
    return batch_to_examples({"instruction": [instruction], "input": [input_], "output": [output]})[0]


def test_templates_render(tok):
    e = ex("Translate.", "Bonjour", "Hello")
    assert render_context(e, "plain") == "Translate.\nHello\n"
    assert render_context(ex("Hi.", "x"), "plain") == "Hi.\n"
    assert render_context(e, "alpaca") == ALPACA_PROMPT.format(instruction="Translate.", input="Hello")
    assert "### Input" not in render_context(ex("Hi.", "x"), "alpaca")
    assert render_context(e, "chat", tok) == "<s>user\nTranslate.\nHello</s>\n<s>assistant\n"
    with pytest.raises(ValueError, match="unknown template"):
        render_context(e, "nope")


def test_boundary_tokens_never_merge(tok):
    # "hel" + "lo" tokenized together is the single token "hello": exact encoding keeps them apart.
    assert tok.tokenize("say hello") != tok.tokenize("say hel") + tok.tokenize("lo")
    enc = PairEncoder(tok, "plain").encode_ids(tok("say hel", add_special_tokens=False).input_ids,
                                               tok("lo world", add_special_tokens=False).input_ids)
    response = tok("lo world", add_special_tokens=False).input_ids
    assert enc.cond[enc.cond_start:] == response == enc.uncond[enc.uncond_start:]
    assert enc.cond[0] == tok.bos_token_id and enc.uncond[0] == tok.bos_token_id


def test_response_identical_in_both_passes_for_every_template(tok):
    e = ex("Give three tips.", " hello world", "for health")  # leading space: a merge-prone boundary
    for template in ("plain", "alpaca", "chat"):
        enc = PairEncoder(tok, template).encode(e)
        resp = tok(e.response, add_special_tokens=False).input_ids
        assert enc.cond[enc.cond_start:] == resp == enc.uncond[enc.uncond_start:]
        assert enc.n_response_tokens == len(resp) and enc.note == ""
    chat = PairEncoder(tok, "chat").encode(e)
    assert tok.decode(chat.uncond[:chat.uncond_start]) == "<s>assistant\n"  # the chat header stands in for BOS
    assert chat.cond[0] == tok.bos_token_id


def test_empty_response_is_nan_with_reason(tok):
    enc = PairEncoder(tok).encode(ex("Say something.", "   "))
    assert enc.cond is None and "empty response" in enc.note


def test_response_cut_at_tail(tok):
    enc = PairEncoder(tok, max_length=12, min_response_tokens=2).encode_ids([5] * 4, list(range(10, 30)))
    assert len(enc.cond) == 12 and enc.cond[enc.cond_start:] == list(range(10, 17))
    assert enc.uncond[enc.uncond_start:] == list(range(10, 17)) and enc.n_response_tokens == 7
    assert "response cut to 7 of 20 tokens" in enc.note


def test_long_context_cut_from_left(tok):
    context = list(range(100, 130))
    enc = PairEncoder(tok, max_length=20, min_response_tokens=5).encode_ids(context, list(range(10, 40)))
    # 1 BOS + 14 context tokens (the right end) + 5 response tokens
    assert enc.cond == [tok.bos_token_id] + context[-14:] + list(range(10, 15))
    assert "context cut from the left to 14 of 30 tokens" in enc.note and "response cut to 5" in enc.note
    short = PairEncoder(tok, max_length=20, min_response_tokens=5).encode_ids(context, [10, 11])
    assert short.cond[-2:] == [10, 11] and len(short.cond) == 20  # a short response keeps all its tokens


def test_context_filling_budget_without_left_cut_is_nan(tok):
    enc = PairEncoder(tok, max_length=20, min_response_tokens=0).encode_ids(list(range(100, 130)), [10, 11])
    assert enc.cond is None and "leaves no room for the response" in enc.note


def test_no_bos_skips_first_response_token_in_both_passes():
    tok = build_tiny_tokenizer(bos=False)
    enc = PairEncoder(tok).encode_ids([7, 8], [10, 11, 12])
    assert enc.uncond == [10, 11, 12] and enc.uncond_start == 1
    assert enc.cond == [7, 8, 10, 11, 12] and enc.cond_start == 3 and enc.n_response_tokens == 2
    one = PairEncoder(tok).encode_ids([7, 8], [10])
    assert one.cond is None and "no response token" in one.note


def test_encode_many_equals_one_text_at_a_time(tok):
    rows = [ex("Give three tips.", " hello world", "for health"), ex("Say something.", "   "),
            ex("Translate: chat", "le chat"), ex("Count.", "one two three " * 40)]
    for template in ("plain", "alpaca", "chat"):
        encoder = PairEncoder(tok, template, max_length=64, min_response_tokens=4)
        batched = encoder.encode_many(rows)
        for e, got in zip(rows, batched):
            if not e.response.strip():
                assert got.cond is None and "empty response" in got.note
                continue
            context = tok(render_context(e, template, tok), add_special_tokens=False).input_ids
            assert got == encoder.encode_ids(context, tok(e.response, add_special_tokens=False).input_ids)
