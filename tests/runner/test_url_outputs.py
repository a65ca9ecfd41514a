"""The run with an fsspec URL output, on a filesystem outside the local path namespace (tests.runner.fakeremote):
the same output as a local path, resumes, corrupt parts, the overwrite refusal, and no credential in a message."""

import datasets
import numpy as np
import pytest

from hf_prospector.runner import RunWarning, score_run
from hf_prospector.sources import load_rows
from hf_prospector.storage import Place, StorageError, shown
from tests.runner import fakeremote
from tests.runner.counting import CountingScorer, ScorerFailed

N_ROWS = 10


@pytest.fixture(scope="module")
def rows():
    return load_rows("demo").select(range(N_ROWS))


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """The root of ``fakeremote://``; the test runs in an empty working directory, checked after it."""
    root, cwd = tmp_path / "remote", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.setenv(fakeremote.ROOT, str(root))
    fakeremote.register()
    monkeypatch.chdir(cwd)
    yield root
    assert list(cwd.iterdir()) == []  # a Path() of a URL would have written ./fakeremote:/...


def scorer(model, **kwargs):
    return CountingScorer(str(model), dtype="float32", **{"max_length": 96, **kwargs})


def run(rows, scorer, output, **kwargs):
    return score_run(rows, scorer, output, **{"batch_size": 1, "part_rows": 3, "progress": False,
                                              "source_name": "demo", **kwargs})


def same_rows(a: datasets.Dataset, b: datasets.Dataset) -> None:
    assert a.column_names == b.column_names and a["row_id"] == b["row_id"]
    for column in a.column_names:
        if a.features[column] == datasets.Value("float64"):
            np.testing.assert_allclose(a[column], b[column], rtol=1e-6)
        else:
            assert a[column] == b[column], column


@pytest.mark.parametrize("name", ["scored.parquet", "scored"])
def test_a_url_output_resumes_sets_corrupt_parts_aside_and_equals_a_local_run(rows, tiny_model_dir, tmp_path,
                                                                              remote, name):
    local, _ = run(rows, scorer(tiny_model_dir), tmp_path / f"local-{name}")
    url, parts = f"fakeremote://bucket/runs/{name}", remote / "bucket" / "runs" / f"{name}.parts"
    with pytest.raises(ScorerFailed):
        run(rows, scorer(tiny_model_dir, fail_after=7), url)  # blocks of 3: rows 0-5 saved, row 6 lost
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == ["part-000000000000-000000000003.parquet",
                                                                    "part-000000000003-000000000006.parquet"]
    first = parts / "part-000000000000-000000000003.parquet"
    first.write_bytes(first.read_bytes()[:100])  # cut short on the remote store

    second = scorer(tiny_model_dir)
    with pytest.warns(RunWarning, match=r"part-000000000000-000000000003\.parquet is corrupt .*set aside"):
        out, summary = run(rows, second, url)
    assert sorted(second.scored) == [0, 1, 2, 6, 7, 8, 9]  # the corrupt part's rows and those never saved
    assert (summary.rows_scored, summary.rows_resumed, summary.output) == (7, 3, url)
    assert (parts / f"{first.name}.corrupt").exists() and not list(parts.glob("part-*.parquet"))
    same_rows(out, local)
    same_rows(load_rows(str(remote / "bucket" / "runs" / name)), local)  # what the store holds

    third = scorer(tiny_model_dir)
    out, summary = run(rows, third, url)  # finished: nothing scored again
    assert third.scored == [] and summary.rows_resumed == N_ROWS
    same_rows(out, local)


def test_an_existing_output_at_a_url_is_replaced_only_with_overwrite(rows, tiny_model_dir, remote):
    (remote / "bucket").mkdir()
    rows.select(range(4)).to_parquet(str(remote / "bucket" / "theirs.parquet"))
    rows.select(range(5)).save_to_disk(str(remote / "bucket" / "folder"))
    s = scorer(tiny_model_dir)
    with pytest.raises(FileExistsError, match=r"fakeremote://bucket/theirs\.parquet already holds a \.parquet file "
                                              r"of 4 rows, not written by a run here; pass --overwrite"):
        run(rows, s, "fakeremote://bucket/theirs.parquet")
    with pytest.raises(FileExistsError, match=r"folder already holds a saved dataset \(columns: instruction, input"):
        run(rows, s, "fakeremote://bucket/folder")
    assert s.scored == [] and len(load_rows(str(remote / "bucket" / "theirs.parquet"))) == 4

    out, _ = run(rows, s, "fakeremote://bucket/theirs.parquet", overwrite=True)
    assert len(out) == N_ROWS and len(load_rows(str(remote / "bucket" / "theirs.parquet"))) == N_ROWS
    again = scorer(tiny_model_dir, max_length=64)  # written here now: replaced without overwrite
    run(rows, again, "fakeremote://bucket/theirs.parquet")
    assert sorted(again.scored) == list(range(N_ROWS))


def test_no_message_shows_the_credentials_of_an_output_url(rows, tiny_model_dir, remote):
    secret_url = "fakeremote://reader:s3cr3t-pw@bucket/theirs.parquet"
    (remote / "reader:s3cr3t-pw@bucket").mkdir()
    rows.select(range(4)).to_parquet(str(remote / "reader:s3cr3t-pw@bucket" / "theirs.parquet"))
    with pytest.raises(FileExistsError) as refused:
        run(rows, scorer(tiny_model_dir), secret_url)
    assert "the output fakeremote://***@bucket/theirs.parquet already holds" in str(refused.value)

    # An error of the filesystem itself names its path, credentials included: it is scrubbed.
    (remote / "writer:0ther-pw@bucket").write_text("a file where the run needs a folder")
    with pytest.raises(StorageError) as failed:
        run(rows, scorer(tiny_model_dir), "fakeremote://writer:0ther-pw@bucket/out.parquet")
    assert "***@bucket" in str(failed.value) and failed.value.__cause__ is None
    for err in (refused.value, failed.value):
        assert "pw" not in str(err) and "pw" not in repr(err.args)


def test_places_show_urls_without_credentials_and_join_names(remote):
    assert shown("s3://AKIA123:wJalr/K7@bucket/x.parquet?versionId=abcd1234") == "s3://***@bucket/x.parquet?***"
    assert shown("/data/user:pw@x/out") == "/data/user:pw@x/out"  # a local path is never a URL
    place = Place("fakeremote://bucket/out/scored.parquet")
    assert (place.name, place.suffix, str(place.sibling("x"))) == ("scored.parquet", ".parquet",
                                                                  "fakeremote://bucket/out/x")
    (place.sibling("a.txt")).write(lambda tmp: tmp.write_text("hello"))
    assert (remote / "bucket" / "out" / "a.txt").read_text() == "hello"
    assert [p.name for p in Place("fakeremote://bucket/out").glob("*.txt")] == ["a.txt"]
    assert sorted(p.name for p in (remote / "bucket" / "out").iterdir()) == ["a.txt"]  # the upload was moved


class FakeObjectStore(fakeremote.FakeRemoteFileSystem):
    """``fakeobjects://``, an object store by its protocol's other name (``s3``); it counts its moves."""

    protocol = ("fakeobjects", "s3")
    moves: list = []

    def mv(self, *args, **kwargs):
        FakeObjectStore.moves.append(args[:2])
        return super().mv(*args, **kwargs)


def test_a_file_on_an_object_store_is_put_in_its_place_a_folder_moved(remote, monkeypatch):
    import fsspec

    fsspec.register_implementation("fakeobjects", FakeObjectStore, clobber=True)
    monkeypatch.setattr(FakeObjectStore, "moves", [])
    Place("fakeobjects://bucket/a.parquet").write(lambda tmp: tmp.write_text("one put"))
    assert FakeObjectStore.moves == [] and (remote / "bucket" / "a.parquet").read_text() == "one put"

    def folder(tmp):
        tmp.mkdir()
        (tmp / "state.json").write_text("{}")

    Place("fakeobjects://bucket/saved").write(folder, clear=True)  # several objects: uploaded beside, then moved
    assert len(FakeObjectStore.moves) == 1 and (remote / "bucket" / "saved" / "state.json").exists()
    Place("fakeremote://bucket/b.parquet").write(lambda tmp: tmp.write_text("beside, then moved"))
    assert len(FakeObjectStore.moves) == 1 and sorted(p.name for p in (remote / "bucket").iterdir()) == [
        "a.parquet", "b.parquet", "saved"]


def test_the_manifest_and_the_card_name_an_input_url_without_its_credentials(rows, tiny_model_dir, remote):
    """The manifest is a file others read, and the input's name goes on to the card: neither holds a password."""
    from hf_prospector.pipeline import input_name
    from hf_prospector.recipes import InputSpec

    source = "s3://AKIAXXXX:s3cr3t-key@bucket/rows.jsonl?token=abcd1234"
    assert input_name(InputSpec(source=source)) == "s3://***@bucket/rows.jsonl?*** (split train)"
    with pytest.raises(ScorerFailed):
        run(rows, scorer(tiny_model_dir, fail_after=1), "fakeremote://bucket/out", source_name=source)
    manifest = (remote / "bucket" / "out.parts" / "manifest.json").read_text()
    assert "s3://***@bucket/rows.jsonl" in manifest and "s3cr3t" not in manifest and "abcd1234" not in manifest
