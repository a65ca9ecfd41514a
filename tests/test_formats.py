import re

import pytest

from hf_prospector.formats import ROLE_ALIASES, ColumnMapping, FormatError, batch_to_examples, detect_format


def test_alpaca_input_missing_empty_or_none():
    batch = {"instruction": ["a", "b", "c"], "input": ["", None, "x"], "output": ["1", "2", "3"]}
    ex = batch_to_examples(batch)
    assert [e.messages[0]["content"] for e in ex] == ["a", "b", "c\nx"]
    assert [e.input for e in ex] == ["", "", "x"]
    no_input = batch_to_examples({"instruction": ["a"], "output": ["1"]})[0]
    assert no_input.input == "" and no_input.response == "1"


def test_sharegpt_last_and_first_turn():
    conv = [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    last = batch_to_examples({"conversations": [conv]})[0]
    assert last.response == "A2" and [m["content"] for m in last.messages] == ["S", "Q1", "A1", "Q2"]
    assert last.messages[2]["role"] == "assistant" and last.instruction == "Q2"
    first = batch_to_examples({"conversations": [conv]}, turn="first")[0]
    assert first.response == "A1" and [m["role"] for m in first.messages] == ["system", "user"]


def test_messages_and_mapping():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ex = batch_to_examples({"messages": [msgs], "label": [1]})[0]
    assert ex.response == "hello" and ex.messages == [{"role": "user", "content": "hi"}]
    m = ColumnMapping(instruction="q", response="a", input="ctx")
    ex = batch_to_examples({"q": ["Q"], "a": ["A"], "ctx": ["C"]}, mapping=m)[0]
    assert (ex.instruction, ex.input, ex.response) == ("Q", "C", "A")
    assert ex.full_text() == "Q\nC\nA"


def test_no_assistant_turn_gives_empty_response():
    ex = batch_to_examples({"messages": [[{"role": "user", "content": "hi"}]]})[0]
    assert ex.response == "" and ex.nan_note() == "NaN: no assistant turn to score"


def test_missing_columns_error_names_columns_and_formats():
    with pytest.raises(FormatError) as e:
        detect_format(["question", "answer"])
    assert "question" in str(e.value) and "Alpaca" in str(e.value) and "ColumnMapping" in str(e.value)
    with pytest.raises(FormatError, match="lacks"):
        detect_format(["q"], ColumnMapping(instruction="q", response="a"))


def test_non_string_value_names_row_and_column():
    with pytest.raises(FormatError) as e:
        batch_to_examples({"instruction": ["a", "b"], "output": ["x", 3]}, indices=[10, 11])
    assert "row 11" in str(e.value) and "'output'" in str(e.value)
    with pytest.raises(FormatError, match=r"row 0, column 'messages\[1\]\.content'"):
        batch_to_examples({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]]})


ALIASES = [("human", "user"), ("HUMAN", "user"), ("User", "user"), ("gpt", "assistant"), ("GPT", "assistant"),
           ("bot", "assistant"), ("Bot", "assistant"), ("model", "assistant"), ("ChatGPT", "assistant"),
           ("bing", "assistant"), ("bard", "assistant"), ("System", "system"), ("developer", "system"),
           ("tool", "tool"), ("function", "tool"), ("Observation", "tool")]
LAYOUTS = [("conversations", "from", "value"), ("messages", "role", "content")]


@pytest.mark.parametrize("alias, role", ALIASES)
@pytest.mark.parametrize("fmt, role_key, text_key", LAYOUTS)
def test_role_aliases_in_any_case(alias, role, fmt, role_key, text_key):
    turns = [{role_key: alias, text_key: "X"}, {role_key: "user", text_key: "Q"}, {role_key: "gpt", text_key: "A"}]
    ex = batch_to_examples({fmt: [turns]})[0]
    assert ex.messages[0] == {"role": role, "content": "X"} and ex.response == "A" and ex.reason == ""


@pytest.mark.parametrize("answer", [a for a, role in ALIASES if role == "assistant"])
def test_assistant_alias_is_the_response(answer):
    for fmt, role_key, text_key in LAYOUTS:
        turns = [{role_key: "HUMAN", text_key: "Q"}, {role_key: answer, text_key: "A"}]
        ex = batch_to_examples({fmt: [turns]})[0]
        assert (ex.response, ex.instruction, ex.reason) == ("A", "Q", "")


def test_unknown_role_is_the_reason_not_an_empty_response():
    turns = [{"role": "user", "content": "Q"}, {"role": "agent", "content": "A"}]
    ex = batch_to_examples({"messages": [turns]})[0]
    assert ex.response == "" and "empty response" not in ex.nan_note()
    assert "turn 1" in ex.reason and "'agent'" in ex.reason and "assistant (gpt, bot, model" in ex.reason
    assert all(re.search(rf"\b{alias}\b", ex.reason) for alias in ROLE_ALIASES)  # every accepted name is listed
    # Unknown even after the answer: which turn answers is not known, so the row is not scored.
    ex = batch_to_examples({"conversations": [[{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                                               {"from": None, "value": "?"}]]})[0]
    assert ex.response == "" and "turn 2 has the role None" in ex.reason


def test_content_parts_are_joined():
    turns = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
             {"role": "user", "content": [{"type": "text", "text": "Look"}, "at",
                                          {"type": "input_text", "text": "this"}]},
             # Arrow gives every part every field, None where absent.
             {"role": "assistant", "content": [{"type": "text", "text": "A1", "image_url": None},
                                               {"type": None, "text": "A2"}]}]
    ex = batch_to_examples({"messages": [turns]})[0]
    assert ex.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Look\nat\nthis"}]
    assert (ex.response, ex.instruction, ex.reason) == ("A1\nA2", "Look\nat\nthis", "")


@pytest.mark.parametrize("where, turns", [
    ("turn 0 (user)", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"},
                                                     "text": None}]},
                       {"role": "assistant", "content": "A cat."}]),
    ("turn 1 (assistant)", [{"role": "user", "content": [{"type": "text", "text": "Say it."}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "Hi"},
                                                              {"type": "input_audio"}]}]),
])
def test_a_part_a_text_model_cannot_read_is_the_reason(where, turns):
    ex = batch_to_examples({"messages": [turns]})[0]
    kind = turns[0 if "0" in where else 1]["content"][-1]["type"]
    assert ex.response == "" and ex.reason.startswith(where) and repr(kind) in ex.reason
    assert "cannot read" in ex.nan_note()


CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
TOOL_CHAT = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": None, "tool_calls": [CALL]},
             {"role": "tool", "content": "18 C, sunny", "tool_call_id": "c1", "name": None},
             {"role": "assistant", "content": "It is 18 C and sunny.", "tool_calls": None}]


def test_tool_call_conversation():
    last = batch_to_examples({"messages": [TOOL_CHAT]})[0]
    assert last.response == "It is 18 C and sunny." and last.reason == ""
    assert last.messages == [TOOL_CHAT[0], {"role": "assistant", "content": "", "tool_calls": [CALL]},
                             {"role": "tool", "content": "18 C, sunny", "tool_call_id": "c1"}]
    # The first answer is the call itself: nothing to score, and the note says why.
    first = batch_to_examples({"messages": [TOOL_CHAT]}, turn="first")[0]
    assert first.response == "" and first.nan_note() == "NaN: the response (turn 1) is a tool call with no text"
    # OpenAI's older function_call, with text beside the call: the text is the response.
    legacy = [{"role": "user", "content": "Q"},
              {"role": "assistant", "content": "Let me look.", "function_call": CALL["function"]}]
    ex = batch_to_examples({"messages": [legacy]})[0]
    assert ex.response == "Let me look." and ex.reason == ""


def test_sharegpt_function_call_and_observation():
    conv = [{"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "18 C"}, {"from": "gpt", "value": "18 C."}]
    ex = batch_to_examples({"conversations": [conv]})[0]
    assert ex.response == "18 C." and [m["role"] for m in ex.messages] == ["user", "assistant", "tool"]
    assert ex.messages[1]["content"] == "" and ex.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    first = batch_to_examples({"conversations": [conv]}, turn="first")[0]
    assert first.response == "" and "tool call with no text" in first.reason


def test_rows_are_named_by_dataset_row_row_id_or_as_a_batch_position():
    batch = {"instruction": ["a", "b"], "output": ["x", None]}
    with pytest.raises(FormatError, match=r"^row 7, column 'output'"):
        batch_to_examples(batch, indices=[6, 7], map_batch=True)
    with pytest.raises(FormatError, match=r"^row_id 'r7', column 'output'"):
        batch_to_examples({**batch, "row_id": ["r6", "r7"]}, map_batch=True)
    with pytest.raises(FormatError, match=r"^row 7 \(row_id 'r7'\), column 'output'"):
        batch_to_examples({**batch, "row_id": ["r6", "r7"]}, indices=[6, 7], map_batch=True)
    # A map batch without indices: the position is said to be the batch's, with how to get the row.
    with pytest.raises(FormatError, match=r"^row 1 of this batch \(.*with_indices=True\), column 'output'"):
        batch_to_examples(batch, map_batch=True)


def test_chat_template_gets_the_tool_calls():
    """``template="chat"`` hands the calls to a template that knows them; ``plain`` renders an empty turn."""
    from hf_prospector.encoders import render_context
    from tests.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                         "{% for c in m.get('tool_calls') or [] %}[call {{ c['function']['name'] }}]{% endfor %}"
                         "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    ex = batch_to_examples({"messages": [TOOL_CHAT]})[0]
    chat = "<user>Weather in Paris?<assistant>[call weather]<tool>18 C, sunny<assistant>"
    assert render_context(ex, "chat", tok) == chat
    assert render_context(ex, "plain") == "Weather in Paris?\n\n18 C, sunny\n"


def test_turn_all_keeps_every_assistant_turn_with_its_history():
    conv = [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    every = batch_to_examples({"conversations": [conv]}, turn="all")[0]
    last = batch_to_examples({"conversations": [conv]})[0]
    assert (every.response, every.messages, every.position) == (last.response, last.messages, 4)
    assert [(t.position, t.response, len(t.messages)) for t in every.scored_turns()] == [(2, "A1", 2), (4, "A2", 4)]
    assert every.scored_turns()[0].instruction == "Q1"
    # A tool call with no text loses its own turn only; alpaca rows and rows without an answer are one turn.
    tools = batch_to_examples({"messages": [TOOL_CHAT]}, turn="all")[0].scored_turns()
    assert [t.reason for t in tools] == ["the response (turn 1) is a tool call with no text", ""]
    alpaca = batch_to_examples({"instruction": ["a"], "output": ["1"]}, turn="all")[0]
    assert alpaca.scored_turns() == [alpaca] and alpaca.position is None
    none = batch_to_examples({"messages": [[{"role": "user", "content": "hi"}]]}, turn="all")[0]
    assert none.scored_turns() == [none] and none.nan_note() == "NaN: no assistant turn to score"
