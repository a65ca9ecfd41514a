"""A scoring run in its own process, for the fault tests (kill -9, corrupt parts, a changed input):
``python -m tests.runner.resume_job MODEL DATA OUTPUT COUNT_FILE PAUSE [FAIL_AFTER]`` (FAIL_AFTER: scorer calls
before it fails on purpose, leaving the parts of the rows scored until then)."""

import sys

from hf_prospector.runner import score_run
from hf_prospector.sources import load_rows
from tests.runner.counting import CountingScorer

MAX_LENGTH = 96  # short rows: a fast test
PART_ROWS = 2


def main(model: str, data: str, output: str, count_file: str, pause: str, fail_after: str | None = None) -> None:
    scorer = CountingScorer(model, dtype="float32", max_length=MAX_LENGTH, count_file=count_file, pause=float(pause),
                            fail_after=None if fail_after is None else int(fail_after))
    _, summary = score_run(load_rows(data), scorer, output, source_name=data, batch_size=1, part_rows=PART_ROWS,
                           progress=False)
    print(summary.to_text())


if __name__ == "__main__":
    main(*sys.argv[1:7])
