import pytest

from hf_prospector.formats import ColumnMapping, FormatError, batch_to_examples, detect_format


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
    assert ex.response == ""


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
