"""Memory hand-back: freed blocks go back to the OS, after a micro-batch when the process grew, after every call."""

import os
import subprocess
import sys

import pytest
import torch

from hf_prospector.engine import Request, memory
from tests.engine.helpers import varied_requests


@pytest.mark.skipif(memory._malloc_trim() is None, reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_freed_blocks_to_the_os():
    # Freeing a 16 MB block raises glibc's threshold for using mmap, so the 1 MB blocks that follow come from the
    # heap; with one kept at its top, freeing the others returns nothing to the OS until the trim.
    large = torch.ones(16 << 20, dtype=torch.uint8)
    del large
    blocks = [torch.ones(1 << 20, dtype=torch.uint8) for _ in range(200)]
    kept = blocks.pop()
    del blocks
    before = memory.resident_bytes() / 2**20
    assert memory.release_freed_memory()
    assert before - memory.resident_bytes() / 2**20 > 100
    assert kept.sum() == 1 << 20


def fake_trim(monkeypatch) -> list[int]:
    """Replaces malloc_trim; returns the list its calls are recorded in."""
    trims = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: lambda pad: trims.append(pad) or 1)
    monkeypatch.setattr(memory, "_resident_after_release", 0)
    return trims


def test_release_if_grown_by_waits_until_the_process_has_grown(monkeypatch):
    trims, resident = fake_trim(monkeypatch), [5000]
    monkeypatch.setattr(memory, "resident_bytes", lambda: resident[0])
    assert memory.release_freed_memory()  # unconditional; remembers 5000 bytes
    resident[0] = 5099
    assert not memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 1
    resident[0] = 5100
    assert memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 2
    resident[0] = 5150  # measured from 5100 now
    assert not memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 2


def test_engine_checks_freed_memory_after_every_micro_batch(engine, monkeypatch):
    trims, grows = fake_trim(monkeypatch), iter(range(0, 1 << 40, 1 << 20))
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(grows))  # grows 1 MB per reading
    reqs = varied_requests(3)
    passes = engine.forward_passes
    monkeypatch.setattr(memory, "FREED_MEMORY_SLACK", 1 << 40)
    engine.logprobs(reqs)
    assert len(trims) == 1 and engine.forward_passes - passes > 1  # only the hand-back that ends the call
    monkeypatch.setattr(memory, "FREED_MEMORY_SLACK", 1 << 20)
    passes = engine.forward_passes
    engine.logprobs(reqs)
    assert len(trims) == 1 + engine.forward_passes - passes + 1


def test_engine_hands_freed_memory_back_after_every_call(engine, monkeypatch):
    """The engine owns the memory policy: each call ends with an unconditional hand-back, so a long run (of
    ``ds.map`` batches, or of golden-score candidates) stays flat without the scorers' help."""
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda if_grown_by=0: calls.append(if_grown_by) or True)
    engine.logprobs(varied_requests(6))
    assert calls.count(0) == 1 and len(calls) > 1  # and the conditional check after each micro-batch
    calls.clear()
    engine.prefixed_logprobs([1, 50, 60], [Request([90, 91, 92], 0), Request(list(range(100, 140)), 5)])
    assert calls.count(0) == 1


@pytest.mark.slow
def test_onednn_kernel_cache_bounded_by_the_engine_unless_the_user_chose(tiny_model_dir):
    """Importing the engine changes nothing; building one caps oneDNN's cache before its first pass."""
    read = ("import os, sys; from hf_prospector.engine import Engine; from hf_prospector.models import load_causal_lm\n"
            "on_import = os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'unset')\n"
            "Engine(*load_causal_lm(sys.argv[1]), dtype='float32', compile=False)\n"
            "print(on_import, os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    unset = subprocess.run([sys.executable, "-c", read, str(tiny_model_dir)], env=env, capture_output=True, text=True,
                           check=True)
    chosen = subprocess.run([sys.executable, "-c", read, str(tiny_model_dir)],
                            env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}, capture_output=True, text=True,
                            check=True)
    assert (unset.stdout.strip(), chosen.stdout.strip()) == ("unset 256", "64 64")
