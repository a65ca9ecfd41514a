import datasets
import numpy as np
import pytest

from hf_prospector.tasksets import load_task_set, refine_task_set
from tests.conftest import requires_minilm


class ClusteredEncoder:
    """Three tight clusters by the first word of the text: k-means must find one row per cluster."""

    calls = 0

    def encode(self, texts, **kwargs):
        ClusteredEncoder.calls += 1
        centres = {"alpha": [1, 0, 0], "beta": [0, 1, 0], "gamma": [0, 0, 1]}
        rng = np.random.default_rng(len(texts))
        return np.array([centres[t.split()[0]] for t in texts], float) + rng.normal(0, 0.01, (len(texts), 3))


def rows(n=30):
    words = ["alpha", "beta", "gamma"]
    return datasets.Dataset.from_dict({"instruction": [f"{words[i % 3]} task {i}" for i in range(n)],
                                       "output": [f"answer {i}" for i in range(n)]})


def test_refine_picks_one_row_per_cluster_deterministically():
    ds = rows()
    a = refine_task_set(ds, k=3, sample=20, encoder=ClusteredEncoder(), seed=1)
    b = refine_task_set(ds, k=3, sample=20, encoder=ClusteredEncoder(), seed=1)
    assert a["source_index"] == b["source_index"] and len(set(a["source_index"])) == 3
    assert sorted(ds[i]["instruction"].split()[0] for i in a["source_index"]) == ["alpha", "beta", "gamma"]
    assert sum(a["cluster_size"]) == 20 and a["cluster"] == [0, 1, 2]
    for row in a:
        assert row["instruction"] == ds[row["source_index"]]["instruction"]  # records where it came from
    with pytest.raises(ValueError, match=r"k must be an integer from 1 to 20, got 25; k is at most the sample size"):
        refine_task_set(ds, k=25, sample=20, encoder=ClusteredEncoder())


@requires_minilm
@pytest.mark.real_model
def test_refine_with_embedded_encoder_returns_k_distinct_rows(minilm):
    ds = rows(40)
    a = refine_task_set(ds, k=5, sample=30, encoder=minilm, seed=0)
    assert len(a) == 5 and len(set(a["source_index"])) == 5
    assert a["source_index"] == refine_task_set(ds, k=5, sample=30, encoder=minilm, seed=0)["source_index"]


def test_load_task_set_from_file_and_errors(tmp_path):
    path = tmp_path / "tasks.jsonl"
    rows(3).to_json(path)
    assert len(load_task_set(str(path))) == 3
    with pytest.raises(FileNotFoundError):
        load_task_set(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="no rows"):
        load_task_set(rows(0))


def test_nuggets_task_set_loads(shared_data):
    ts = load_task_set(str(shared_data / "task_set_kmeans_100.json"))
    assert len(ts) == 100 and {"instruction", "output"} <= set(ts.column_names)


def test_a_task_with_an_empty_answer_is_named_before_any_model_loads(tmp_path, tiny_model_dir):
    tasks = rows(4).map(lambda row, i: {"output": " " if i in (1, 3) else row["output"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"tasks 1, 3 \(of 4, counting from 0\) have an empty answer "
                                         r"\(task 1: 'beta task 1'\)"):
        load_task_set(tasks)
    from hf_prospector.scorers import GoldScorer

    tasks.to_json(str(tmp_path / "tasks.jsonl"))
    with pytest.raises(ValueError, match=rf"the task set {tmp_path / 'tasks.jsonl'}: tasks 1, 3"):
        GoldScorer(model=str(tiny_model_dir), task_set=str(tmp_path / "tasks.jsonl")).settings()  # loads the set
    assert len(load_task_set(tasks, require_answers=False)) == 4  # refining may start from such a set


def test_a_missing_task_set_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"the task set file {tmp_path / 'tasks.json'} does not exist"):
        load_task_set(str(tmp_path / "tasks.json"))
