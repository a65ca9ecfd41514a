"""The README's first command, ``hf-prospector run recipes/quickstart.yaml``, end to end on the embedded model."""

import math
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from hf_prospector.publishing import list_revisions
from tests.conftest import requires_smollm2
from tests.oracles import top_fraction

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


@requires_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_quickstart_scores_selects_and_publishes(tmp_path):
    command = [sys.executable, "-m", "hf_prospector", "run", str(RECIPE)]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr[-4000:]

    scored = datasets.load_from_disk(str(tmp_path / "prospector_out" / "quickstart" / "scored"))
    assert len(scored) == 22 and scored["row_id"] == list(range(22))
    assert "rows: 22 (22 scored now, 0 by an earlier run)" in first.stdout
    nan_rows = [i for i, v in enumerate(scored["ifd"]) if math.isnan(v)]
    assert f"NaN rows: {len(nan_rows)}" in first.stdout
    assert "Give three tips for staying healthy." in first.stdout  # the score table

    # The published revision holds the top 25% by IFD among finite IFD < 1, counted here by hand.
    top = top_fraction(scored["ifd"], 0.25)
    repo = tmp_path / "prospector_out" / "repo"
    assert "select-ifd-top25pct" in [r.name for r in list_revisions(repo)]
    assert datasets.load_dataset(str(repo), split="train")["row_id"] == top
    card = (repo / "README.md").read_text()
    assert "| model | smollm2-135m |" in card and "| selection_rule_slug | ifd-top25pct |" in card

    # Again: nothing is scored twice, and the selection is published as a new commit of the revision.
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr[-4000:]
    assert "rows: 22 (0 scored now, 22 by an earlier run)" in second.stdout
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "select-ifd-top25pct"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(log) == 3 and log[0].startswith("Select ifd-top25pct from demo")
