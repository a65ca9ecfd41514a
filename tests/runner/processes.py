"""Killing a scoring process mid-run, as the crash-and-resume tests do."""

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_once_parts_saved(proc: subprocess.Popen, work: Path, parts: int, timeout: float, poll: float) -> None:
    """SIGKILL ``proc`` once ``work`` holds ``parts`` part files; fails if it exits first or none come in time."""
    deadline = time.monotonic() + timeout
    while len(list(work.glob("part-*.parquet"))) < parts:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no part file was written"
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
