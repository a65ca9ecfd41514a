"""The command line in its own process, its scorer counting the rows it scores, for the Ctrl-C test:
``python -m tests.runner.cli_job COUNT_FILE PAUSE ARGS...`` runs ``hf-prospector ARGS...``."""

import sys

from hf_prospector import cli, pipeline
from tests.runner.counting import CountingScorer


def main(count_file: str, pause: str, *args: str) -> int:
    pipeline.build_scorer = lambda spec: CountingScorer(**spec.scorer_kwargs(), count_file=count_file,
                                                        pause=float(pause))
    return cli.main(list(args))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
