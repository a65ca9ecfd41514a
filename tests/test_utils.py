"""The shared helpers, each against a hand-written expectation; atomic_write also against a real kill -9."""

import io
import signal
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, List, Value, concatenate_datasets

from hf_prospector import models
from hf_prospector.utils import (ROW_ID, as_encoder, atomic_write, float_column, format_number, markdown_table,
                                 new_figure, numeric_kind, remove_path, require_column, require_int,
                                 require_unique_row_ids, violin_figure)

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


# -- the row id -----------------------------------------------------------------------------------------------
def test_the_row_id_is_written_once_in_the_library():
    """Every other module names the column through ROW_ID: no string literal "row_id" outside utils.py."""
    assert ROW_ID == "row_id"
    found = []
    for path in sorted((ROOT / "hf_prospector").rglob("*.py")):
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
        for token in tokens:
            if token.type == tokenize.STRING and token.string.strip("'\"") == "row_id":
                found.append(str(path.relative_to(ROOT)))
    assert found == ["hf_prospector/utils.py"]


# -- checks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, minimum, maximum", [(1, 1, None), (7, 2, 7), (np.int64(3), 1, None), (0, 0, 0)])
def test_require_int_returns_an_allowed_integer_as_int(value, minimum, maximum):
    got = require_int("n", value, minimum, maximum)
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize("value, minimum, maximum, message", [
    (0, 1, None, "batch_size must be an integer >= 1, got 0"),
    (9, 1, 8, "batch_size must be an integer from 1 to 8, got 9"),
    (-3, 2, 5, "batch_size must be an integer from 2 to 5, got -3"),
    (True, 1, None, "batch_size must be an integer >= 1, got True (bool)"),
    (2.0, 1, None, "batch_size must be an integer >= 1, got 2.0 (float)"),
    ("512", 1, None, "batch_size must be an integer >= 1, got '512' (str)"),
    (None, 1, None, "batch_size must be an integer >= 1, got None (NoneType)"),
])
def test_require_int_names_the_setting_the_value_and_the_range(value, minimum, maximum, message):
    with pytest.raises(ValueError) as err:
        require_int("batch_size", value, minimum, maximum)
    assert str(err.value) == message


def test_require_int_adds_the_hint_and_raises_the_callers_error():
    class SettingError(ValueError):
        pass

    with pytest.raises(SettingError) as err:
        require_int("run.part_rows", 0, 1, hint="rows per part file", error=SettingError)
    assert str(err.value) == "run.part_rows must be an integer >= 1, got 0; rows per part file"


def test_unique_row_ids_give_each_row_its_position():
    assert require_unique_row_ids(iter(["c", "a", "b"])) == {"c": 0, "a": 1, "b": 2}
    assert require_unique_row_ids([]) == {}


def test_a_repeated_row_id_is_named_with_both_rows():
    with pytest.raises(ValueError) as err:
        require_unique_row_ids([5, 7, 9, 7, 5], where="'B': ", fix="deduplicate the rows")
    assert str(err.value) == ("'B': column 'row_id' repeats the value 7 (rows 1 and 3); "
                              "row_id must identify rows: deduplicate the rows")
    with pytest.raises(ValueError, match=r"repeats the value 'x' \(rows 0 and 2\).*rename or drop it"):
        require_unique_row_ids(["x", "y", "x"])


# -- columns --------------------------------------------------------------------------------------------------
def test_require_column_names_the_column_the_columns_there_and_the_fix():
    ds = Dataset.from_dict({"ifd": [0.5], "text": ["a"]})
    require_column(ds, "ifd", "score column", "Score it first.")  # present: nothing happens
    with pytest.raises(KeyError) as err:
        require_column(ds, "gold_score", "score column", "Score it first.")
    assert err.value.args[0] == ("the dataset has no score column 'gold_score'; columns: ['ifd', 'text']. "
                                 "Score it first.")


@pytest.mark.parametrize("feature, kind", [
    (Value("float32"), "float"), (Value("float64"), "float"), (Value("int8"), "int"), (Value("uint64"), "int"),
    (Value("null"), "null"), (Value("string"), None), (Value("bool"), None), (ClassLabel(names=["a", "b"]), None),
    (List(Value("float32")), None),
])
def test_numeric_kind(feature, kind):
    assert numeric_kind(feature) == kind


def test_float_column_keeps_row_order_and_turns_nulls_into_nan():
    ints = Dataset.from_dict({"n": [3, None, 1]}, features=Features({"n": Value("int64")}))
    floats = Dataset.from_dict({"x": [0.5, None, -INF]}, features=Features({"x": Value("float32")}))
    chunked = concatenate_datasets([floats, floats.select([2, 0])])  # two Arrow chunks
    nulls = Dataset.from_dict({"z": [None, None]})
    for ds, name, expected in ((ints, "n", [3.0, NAN, 1.0]), (floats, "x", [0.5, NAN, -INF]),
                               (chunked, "x", [0.5, NAN, -INF, -INF, 0.5]), (nulls, "z", [NAN, NAN]),
                               (ints.select([2, 0]), "n", [1.0, 3.0])):
        got = float_column(ds, name)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, np.array(expected))


# -- text -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, spec, text", [
    (0.123456, ".3f", "0.123"), (2.0, ".3f", "2.000"), (0.000123456789, ".6g", "0.000123457"),
    (1234567.0, ".6g", "1.23457e+06"), (NAN, ".3f", "n/a"), (None, ".6g", "n/a"), (-INF, ".3f", "-inf"),
])
def test_format_number(value, spec, text):
    assert format_number(value, spec) == text


def test_markdown_table_escapes_pipes():
    text = markdown_table(["a", "b|c"], [[1, "x|y"], [None, 2.5]])
    assert text == "| a | b\\|c |\n| --- | --- |\n| 1 | x\\|y |\n| None | 2.5 |"


def test_markdown_table_padded_aligns_columns():
    text = markdown_table(["method", "s"], [["eager", 12.5], ["compiled", 3]], pad=True)
    assert text == ("| method   | s    |\n"
                    "|----------|------|\n"
                    "| eager    | 12.5 |\n"
                    "| compiled | 3    |")
    assert markdown_table(["only"], []) == "| only |\n| --- |"


# -- files ----------------------------------------------------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_atomic_write_replaces_a_file_and_keeps_its_suffix(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_text("new")))
    assert target.read_text() == "new" and seen[0].parent == tmp_path and seen[0].suffix == ".json"
    # np.savez adds ".npz" to a name without it: the temporary name keeps the suffix, so the target is exact.
    sums = tmp_path / "cache.npz"
    atomic_write(sums, lambda tmp: np.savez(tmp, a=np.arange(3)))
    with np.load(sums) as f:
        np.testing.assert_array_equal(f["a"], [0, 1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz", "manifest.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "part.parquet"
    target.write_text("finished work")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "finished work" and leftovers(tmp_path) == []


def test_folders_are_replaced_only_when_cleared(tmp_path):
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def write_folder(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")

    with pytest.raises(OSError):  # another writer's folder is never replaced without clear=True
        atomic_write(target, write_folder)
    assert [p.name for p in target.iterdir()] == ["old.txt"] and leftovers(tmp_path) == []
    atomic_write(target, write_folder, clear=True)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    atomic_write(fresh, write_folder)
    assert (fresh / "new.txt").read_text() == "new"


KILLED_WRITER = """
import sys, time
from pathlib import Path
from hf_prospector.utils import atomic_write

def slow(tmp):
    with open(tmp, "w") as f:
        f.write("half of the new text")
        f.flush()
        Path(sys.argv[2]).touch()  # tell the test the write is under way
        time.sleep(60)
        f.write(" and the rest")

atomic_write(Path(sys.argv[1]), slow)
"""


def test_kill_9_during_a_write_leaves_the_old_file(tmp_path):
    target, started = tmp_path / "manifest.json", tmp_path / "started"
    target.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(started)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".manifest")]  # only a hidden temporary


def test_remove_path(tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    for name in ("tree", "file", "missing"):
        remove_path(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# -- figures --------------------------------------------------------------------------------------------------
def test_new_figure_draws_off_screen(tmp_path):
    fig = new_figure(3, 2)
    assert tuple(fig.get_size_inches()) == (3, 2) and fig.get_layout_engine() is not None
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_violin_figure_draws_finite_values_per_group(tmp_path):
    from matplotlib.collections import LineCollection, PolyCollection

    spread = np.array([1.0, 2.0, 2.5, 3.0, NAN, INF])
    single = np.array([4.0, 4.0, NAN])  # one distinct value: no density, drawn as points
    fig, axes = violin_figure([("IFD", [("all rows", spread), ("selected", single)]), ("log PPL", [("x", spread)])],
                              5, colors={"all rows": "tab:green", "selected": "tab:red"})
    assert len(axes) == 2 and tuple(fig.get_size_inches()) == (5, 4)
    ifd, ppl = axes
    assert [t.get_text() for t in ifd.get_xticklabels()] == ["all rows", "selected"]
    assert ifd.get_ylabel() == "IFD" and ppl.get_ylabel() == "log PPL"
    bodies = [c for c in ifd.collections if isinstance(c, PolyCollection)]
    assert len(bodies) == 1 and np.allclose(bodies[0].get_facecolor()[0][:3], (0.172549, 0.627451, 0.172549))
    # The extrema lines span the finite values only: NaN and inf are left out (the caller's table counts them).
    extrema = [seg for c in ifd.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    ys = np.concatenate([seg[:, 1] for seg in extrema])
    assert ys.min() == 1.0 and ys.max() == 3.0
    (points,) = ifd.get_lines()
    assert list(points.get_xdata()) == [2, 2] and list(points.get_ydata()) == [4.0, 4.0]
    assert points.get_color() == "tab:red"
    fig.savefig(tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000


def test_importing_the_helpers_loads_no_heavy_library():
    code = ("import sys, hf_prospector.utils as u; "
            "print(sorted(m for m in ('numpy', 'pyarrow', 'matplotlib', 'datasets', 'torch') if m in sys.modules)); "
            "u.new_figure(1, 1); print('matplotlib.pyplot' in sys.modules)")  # no pyplot state, no display
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


# -- models ---------------------------------------------------------------------------------------------------
def test_as_encoder_accepts_an_object_or_loads_a_name(monkeypatch):
    loaded = []
    monkeypatch.setattr(models, "load_encoder", lambda name: loaded.append(name) or f"encoder {name}")
    mine = object()
    assert as_encoder(mine) is mine and loaded == []
    assert as_encoder("all-minilm-l6-v2") == "encoder all-minilm-l6-v2"
    assert as_encoder() == "encoder None"
    assert loaded == ["all-minilm-l6-v2", None]


def test_renamed_keyword_takes_the_old_name_with_a_warning_and_refuses_both():
    from hf_prospector.utils import renamed_keyword

    assert renamed_keyword("mapping", "new", "columns", None) == "new"
    with pytest.warns(DeprecationWarning, match="columns= is now mapping="):
        assert renamed_keyword("mapping", None, "columns", "old") == "old"
    with pytest.raises(ValueError, match="give mapping= only"):
        renamed_keyword("mapping", "new", "columns", "old")


def test_inputs_are_mapped_by_mapping_everywhere_and_the_card_shows_score_columns(tmp_path):
    """One meaning per name: ``mapping=`` is the input layout (scorers, embeddings, diversity); ``columns=`` is
    its old name there, and the card's list of shown score columns is ``score_columns=``."""
    import inspect

    from hf_prospector import Scorer, embed_column, make_card, select_diverse, write_card

    for fn in (Scorer.__init__, embed_column, select_diverse):
        assert "mapping" in inspect.signature(fn).parameters, fn
    for fn in (make_card, write_card):
        assert "score_columns" in inspect.signature(fn).parameters, fn

    from datasets import Dataset

    scored = Dataset.from_dict({"instruction": ["a", "b"], "output": ["x", "y"], "ifd": [0.5, 0.7],
                                "ifd_loss": [0.6, 0.8]})
    assert "ifd_loss" in str(make_card(scored, tmp_path / "all", provenance={}))
    with pytest.warns(DeprecationWarning, match="columns= is now score_columns="):
        card = str(make_card(scored, tmp_path / "old", provenance={}, columns=["ifd"]))
    assert "ifd" in card and "ifd_loss" not in card
