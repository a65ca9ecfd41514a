"""The flat public API: ``from hf_prospector import ...`` loads lazily; ``--help`` imports no torch or datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_prospector

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "datasets", "transformers")
COMMANDS = ("score", "taskset", "select", "card", "publish", "report", "run")

# Runs `python -m hf_prospector --help`, then each subcommand's --help, in one fresh process; prints what loaded.
HELP = f"""
import json, runpy, sys
from hf_prospector import cli
sys.argv = ["hf_prospector", "--help"]
try:
    runpy.run_module("hf_prospector", run_name="__main__")
except SystemExit:
    pass
for command in {COMMANDS!r}:
    try:
        cli.main([command, "--help"])
    except SystemExit:
        pass
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)
"""


def loaded_after(code: str) -> tuple[list[str], str]:
    job = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert job.returncode == 0, job.stderr
    return json.loads(job.stderr.strip().splitlines()[-1]), job.stdout


def test_import_loads_no_torch_or_datasets():
    code = (f"import sys, json, hf_prospector; dir(hf_prospector); hf_prospector.__version__; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)")
    assert loaded_after(code)[0] == []


def test_help_of_every_command_loads_no_torch_or_datasets():
    loaded, out = loaded_after(HELP)
    assert loaded == []
    assert "usage: hf-prospector [-h]" in out and all(f"usage: hf-prospector {c}" in out for c in COMMANDS)
    assert "--batch-size BATCH_SIZE" in out and "(default 256)" in out


def test_every_exported_name_resolves_and_is_listed():
    listed = dir(hf_prospector)
    for name in hf_prospector.__all__:
        assert getattr(hf_prospector, name) is not None and name in listed, name
    from hf_prospector import selection, publishing, pipeline, scorers

    assert hf_prospector.IFDScorer is scorers.IFDScorer and hf_prospector.select is selection.select
    assert hf_prospector.publish is publishing.publish and hf_prospector.run_recipe is pipeline.run_recipe
    assert {"IFDScorer", "GoldScorer", "select", "publish", "publish_local", "run_recipe", "load_rows"} <= set(listed)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        hf_prospector.no_such_name


def test_old_import_paths_still_work():
    from hf_prospector.publishing import make_card, publish, publish_local, write_card
    from hf_prospector.reports import assess, compare
    from hf_prospector.scorers import GoldScorer, IFDScorer
    from hf_prospector.selection import SelectionRule, cherry, nuggets, select, select_diverse, superfiltering

    from hf_prospector import (ColumnMapping, FacilityLocation, SelectionReport, embed_column, load_causal_lm,
                               load_recipe, load_task_set, refine_task_set, score_run)
    for old, flat in ((publish, "publish"), (publish_local, "publish_local"), (make_card, "make_card"),
                      (write_card, "write_card"), (assess, "assess"), (compare, "compare"), (GoldScorer, "GoldScorer"),
                      (IFDScorer, "IFDScorer"), (SelectionRule, "SelectionRule"), (cherry, "cherry"),
                      (nuggets, "nuggets"), (select, "select"), (select_diverse, "select_diverse"),
                      (superfiltering, "superfiltering")):
        assert getattr(hf_prospector, flat) is old, flat
    assert all(callable(f) for f in (ColumnMapping, FacilityLocation, SelectionReport, embed_column, load_causal_lm,
                                     load_recipe, load_task_set, refine_task_set, score_run))
