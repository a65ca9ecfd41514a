"""A driver of a Ray scoring run in its own process, for the driver-restart test:
``python -m tests.ray_job MODEL DATA OUTPUT COUNT_FILE PAUSE`` joins the cluster at ``RAY_ADDRESS``."""

import sys

from hf_prospector.ray_runner import score_run_ray
from hf_prospector.sources import load_rows
from tests.runner.counting import CountingScorer

MAX_LENGTH = 96  # short rows: a fast test
PART_ROWS = 2


def main(model: str, data: str, output: str, count_file: str, pause: str) -> None:
    scorer = CountingScorer(model, dtype="float32", max_length=MAX_LENGTH, count_file=count_file, pause=float(pause))
    _, summary = score_run_ray(load_rows(data), scorer, output, source_name=data, batch_size=1, part_rows=PART_ROWS,
                               actors=2, progress=False)
    print(summary.to_text())


if __name__ == "__main__":
    main(*sys.argv[1:6])
