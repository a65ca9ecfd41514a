"""The publishing side of test_hub.py, run in a subprocess whose HF_ENDPOINT is the Hub stand-in.

huggingface_hub and datasets read HF_ENDPOINT when imported, hence a fresh process. The token comes from
HF_TOKEN in the environment, as for a user. Prints one JSON line (prefixed RESULT) with what publish returned.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict

from hf_prospector.publishing import publish
from tests.publishing.helpers import PROVENANCE, rows_where, scored_dataset


def main() -> None:
    scored = scored_dataset()
    band = rows_where(scored, lambda row: 0.9 < row["ifd"] < 1.0)
    results = {"beside_source": asdict(publish(band, "bob/alpaca-src", scored=scored, provenance=PROVENANCE,
                                               thresholds={"ifd": 0.9}))}
    results["pull_request"] = asdict(publish(band.remove_columns(["ifd", "ppl_cond"]), "alice/picked",
                                             create_pr=True, private=True, scored=scored, provenance=PROVENANCE))
    try:
        publish(band, "bob/alpaca-src", revision="refs/pr/99", scored=scored, provenance=PROVENANCE)
    except Exception as err:  # shown in full on stderr, which the test searches for the token
        traceback.print_exc()
        results["error"] = f"{type(err).__name__}: {err}"
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
