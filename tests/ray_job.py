"""A driver of a Ray scoring run in its own process, for the driver-restart test:
``python -m tests.ray_job MODEL DATA OUTPUT COUNT_FILE PAUSE READ`` joins the cluster at ``RAY_ADDRESS``; READ is
``ray-data`` (the file is read by Ray Data, as ``--engine ray`` reads one) or ``datasets`` (by ``load_rows`` on the
driver, as a ``Dataset`` given in Python is)."""

import sys

from hf_prospector.ray_runner import score_run_ray
from hf_prospector.sources import load_rows
from tests.runner.counting import CountingScorer

MAX_LENGTH = 96  # short rows: a fast test
PART_ROWS = 2


def main(model: str, data: str, output: str, count_file: str, pause: str, read: str) -> None:
    scorer = CountingScorer(model, dtype="float32", max_length=MAX_LENGTH, count_file=count_file, pause=float(pause))
    source = data if read == "ray-data" else load_rows(data)
    _, summary = score_run_ray(source, scorer, output, source_name=data, batch_size=1, part_rows=PART_ROWS,
                               actors=2, progress=False)
    print(summary.to_text())


if __name__ == "__main__":
    main(*sys.argv[1:7])
