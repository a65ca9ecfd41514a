"""The embedding column: what text is embedded, that the column is a cache, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from hf_prospector import models
from hf_prospector.embeddings import cache_column, default_embedding_column, embed_column, embedding_matrix

from tests.selection.spies import FakeEncoder, Spy

ROWS = {"instruction": ["Name a colour.", "Add the numbers.", "Say hi."], "input": ["", "2 and 3", None],
        "output": ["Blue.", "5", "Hi!"]}
TEXTS = ["Name a colour.\nBlue.", "Add the numbers.\n2 and 3\n5", "Say hi.\nHi!"]


def test_embeds_the_full_text_of_each_row():
    encoder = FakeEncoder()
    ds = embed_column(Dataset.from_dict(ROWS), encoder=encoder, column="emb")
    assert encoder.texts == TEXTS
    np.testing.assert_allclose(embedding_matrix(ds, "emb"), FakeEncoder().encode(TEXTS), rtol=1e-6)
    assert embedding_matrix(ds, "emb").dtype == np.float32


def test_the_column_is_a_cache_that_survives_select_and_save(tmp_path):
    encoder = FakeEncoder()
    ds = embed_column(Dataset.from_dict(ROWS), encoder=encoder, column="emb")
    ds.select([2, 0]).save_to_disk(str(tmp_path / "saved"))
    reloaded = load_from_disk(str(tmp_path / "saved"))
    assert embed_column(reloaded, encoder=encoder, column="emb") is reloaded
    assert encoder.calls == 1
    np.testing.assert_array_equal(embedding_matrix(reloaded, "emb"), embedding_matrix(ds, "emb")[[2, 0]])


def test_text_fn_and_columns_change_the_text():
    encoder = FakeEncoder()
    embed_column(Dataset.from_dict(ROWS), encoder=encoder, column="emb_out", text_fn=lambda row: row["output"])
    assert encoder.texts == ROWS["output"]
    with pytest.raises(TypeError, match="row 1: text_fn returned int"):
        embed_column(Dataset.from_dict(ROWS), encoder=encoder, column="x", text_fn=lambda row: 5 if row["input"] else "ok")


def test_cache_column_names():
    assert default_embedding_column() == "embedding_all-minilm-l6-v2"
    assert default_embedding_column("sentence-transformers/all-mpnet-base-v2") == \
        "embedding_sentence-transformers-all-mpnet-base-v2"
    assert cache_column("bge-small", None) == "embedding_bge-small"
    assert cache_column(FakeEncoder(), "mine") == "mine"
    with pytest.raises(ValueError, match="encoder object carries no reliable name"):
        cache_column(FakeEncoder())
    with pytest.raises(ValueError, match="custom text_fn"):
        cache_column(None, None, text_fn=str)


def test_embedding_matrix_errors_name_the_rows():
    ragged = Dataset.from_dict({"emb": [[1.0, 2.0], [1.0], [3.0, 4.0]]})
    with pytest.raises(ValueError, match=r"rows \[1\] have vectors of another length"):
        embedding_matrix(ragged, "emb")
    holes = Dataset.from_dict({"emb": [[1.0, 2.0], None]})
    with pytest.raises(ValueError, match=r"null in rows \[1\]"):
        embedding_matrix(holes, "emb")
    with pytest.raises(KeyError, match="no embedding column 'vec'.*embed_column"):
        embedding_matrix(holes, "vec")
    with pytest.raises(TypeError, match="not vectors"):
        embedding_matrix(Dataset.from_dict({"emb": [1.0]}), "emb")


@pytest.mark.real_model
def test_default_encoder_by_name_is_minilm(minilm, monkeypatch):
    spy = Spy(minilm)
    monkeypatch.setattr(models, "load_encoder", lambda name: spy if name is None else pytest.fail(name))
    ds = embed_column(Dataset.from_dict(ROWS))
    vectors = embedding_matrix(ds, "embedding_all-minilm-l6-v2")
    assert vectors.shape == (3, 384) and spy.calls == 1
    np.testing.assert_allclose(vectors, minilm.encode(TEXTS), atol=1e-5)
    assert embed_column(ds) is ds and spy.calls == 1
