"""A scoring run in its own process, for the kill -9 test:
``python -m tests.cli.resume_job MODEL DATA OUTPUT COUNT_FILE PAUSE``."""

import sys

from hf_prospector.runner import score_run
from hf_prospector.sources import load_rows
from tests.cli.counting import CountingScorer

MAX_LENGTH = 96  # short rows: a fast test


def main(model: str, data: str, output: str, count_file: str, pause: str) -> None:
    scorer = CountingScorer(model, dtype="float32", max_length=MAX_LENGTH, count_file=count_file, pause=float(pause))
    _, summary = score_run(load_rows(data), scorer, output, source_name=data, batch_size=1, part_rows=2,
                           progress=False)
    print(summary.to_text())


if __name__ == "__main__":
    main(*sys.argv[1:6])
