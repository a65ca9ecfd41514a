"""The Hub path, against the local Hub stand-in (tests/publishing/hub_standin.py), never the real Hub.

The publish runs in a subprocess with HF_ENDPOINT pointing at the stand-in and HF_HUB_DISABLE_XET=1;
the test checks what the stand-in received: branches, files, card, commit messages, and that the token
reached the server in the Authorization header and nowhere else.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from hf_prospector.publishing import PublishError, publish
from hf_prospector.publishing.hub import _token_kept_secret, resolve_token
from tests.publishing.helpers import (PROVENANCE, assert_png, assert_stats_match, provenance_table, rows_where,
                                     scored_dataset)
from tests.publishing.hub_standin import HubStandIn

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_standinTestToken0123456789abcdef"
SOURCE_CARD = b"---\nlicense: mit\nlanguage:\n- en\n---\n\n# Alpaca source\n\nWritten by the source's authors.\n"


def parquet_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.to_parquet(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Run hub_publish_job.py once against a fresh stand-in; returns (stand-in, source main oid, job output)."""
    scored = scored_dataset()
    with HubStandIn() as hub:
        source = hub.create_repo("bob/alpaca-src", files={
            "README.md": SOURCE_CARD, "data/train-00000-of-00001.parquet": parquet_bytes(scored),
            "data/test-00000-of-00001.parquet": parquet_bytes(scored.select(range(3)))})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(tmp_path_factory.mktemp("hf_home")), PYTHONPATH=str(ROOT))
        job = subprocess.run([sys.executable, "-m", "tests.publishing.hub_publish_job"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        yield hub, source.refs["main"], job


def job_results(job) -> dict:
    assert job.returncode == 0, job.stderr[-3000:]
    line = next(line for line in job.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_publish_beside_the_source_on_a_new_branch(published):
    hub, source_main, job = published
    result = job_results(job)["beside_source"]
    scored = scored_dataset()
    band = rows_where(scored, lambda row: 0.9 < row["ifd"] < 1.0)
    repo = hub.repos["bob/alpaca-src"]
    assert hub.unhandled == []
    assert result["revision"] == "select-ifd-0.9-1" and repo.refs["select-ifd-0.9-1"] == result["commit"]
    assert repo.refs["main"] == source_main  # the default branch is untouched

    files = repo.resolve(result["revision"]).files
    assert sorted(files) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet",
                             "figures/ifd_histogram.png", "figures/ifd_violin.png", "figures/ppl_cond_histogram.png"]
    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    assert table.to_pylist() == band.to_list()
    for name in [f for f in files if f.endswith(".png")]:
        assert_png(io.BytesIO(files[name]))

    card = DatasetCard(files["README.md"].decode())
    assert card.data.license == "mit" and card.data.language == ["en"]  # the source card's metadata survives
    assert card.data.configs == [{"config_name": "default",
                                  "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert card.data.dataset_info["splits"][0]["num_examples"] == len(band)  # push_to_hub's metadata survives
    assert "Written by the source's authors." in card.text
    assert provenance_table(card.text)["rows_selected"] == str(len(band))
    assert_stats_match(card.text, {("ifd", "all rows"): scored["ifd"], ("ifd", "selected"): band["ifd"],
                                   ("ppl_cond", "all rows"): scored["ppl_cond"],
                                   ("ppl_cond", "selected"): band["ppl_cond"]})

    commits = [c for c in hub.commits if c["revision"] == result["revision"]]
    summary = f"Select ifd-0.9-1 from bob/alpaca-src@0123abc: {len(band)} of 40 rows"
    assert [c["summary"] for c in commits] == [summary, f"Dataset card: {summary}"]
    assert commits[0]["parent"] == source_main and commits[1]["parent"] == commits[0]["oid"]
    assert commits[0]["files"] == ["data/train-00000-of-00001.parquet", "README.md"]
    assert commits[0]["deleted"] == ["data/test-00000-of-00001.parquet"]
    assert sorted(commits[1]["files"]) == ["README.md", "figures/ifd_histogram.png", "figures/ifd_violin.png",
                                           "figures/ppl_cond_histogram.png"]
    recipe = dict(line.split(": ", 1) for line in commits[0]["description"].splitlines())
    assert recipe == {**{k: str(v) for k, v in PROVENANCE.items()}, "rows_in": "40",
                      "rows_selected": str(len(band)), "library_version": recipe["library_version"]}


def test_publish_as_a_pull_request_to_a_new_private_repo(published):
    hub, _, job = published
    result = job_results(job)["pull_request"]
    repo = hub.repos["alice/picked"]
    assert repo.private
    assert result["revision"] == "refs/pr/1" and result["pr_url"].endswith("/datasets/alice/picked/discussions/1")
    assert sorted(repo.resolve("main").files) == [".gitattributes"]
    card = DatasetCard(repo.resolve("refs/pr/1").files["README.md"].decode())
    assert card.data.license == "mit"  # looked up on the source's card
    assert [c["pr"] for c in hub.commits if c["repo_id"] == "alice/picked"] == [True, False]


def test_the_token_reaches_the_server_and_nothing_else(published):
    hub, _, job = published
    assert "RevisionNotFoundError" in job_results(job)["error"]
    assert hub.authorizations and set(hub.authorizations) == {f"Bearer {TOKEN}"}
    assert TOKEN not in job.stdout and TOKEN not in job.stderr
    assert "Traceback" in job.stderr  # the failed publish printed its traceback, and the token is not in it
    for commit in hub.commits:
        assert TOKEN not in commit["summary"] + commit["description"]
    for repo in hub.repos.values():
        for stored in repo.commits.values():
            assert not any(TOKEN.encode() in content for content in stored.files.values())


def test_the_default_branch_needs_explicit_consent():
    ds = scored_dataset(rows=3)
    with pytest.raises(ValueError, match="default branch 'main'"):
        publish(ds, "alice/x", revision="main", token=TOKEN)


def test_a_missing_token_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("hf_prospector.publishing.hub.get_token", lambda: None)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        resolve_token(None)
    assert resolve_token("hf_given") == "hf_given"


def test_errors_holding_the_token_are_scrubbed():
    with pytest.raises(PublishError) as caught:
        with _token_kept_secret(TOKEN):
            try:
                raise KeyError(f"header Authorization: Bearer {TOKEN}")
            except KeyError as inner:
                raise RuntimeError("request failed") from inner
    shown = "".join(traceback.format_exception(caught.value))
    assert TOKEN not in shown and "RuntimeError: request failed" in shown
    with pytest.raises(LookupError, match="unrelated"):  # other errors pass through unchanged
        with _token_kept_secret(TOKEN):
            raise LookupError("unrelated")


def test_an_empty_selection_is_refused_before_the_hub_is_contacted():
    with pytest.raises(ValueError, match=r"kept 0 rows: nothing to publish"):
        publish(scored_dataset(rows=3).select([]), "me/empty", revision="none", token=TOKEN)
