"""Hardware choices: the dtype, the scoring head (padded on CUDA, by vocabulary blocks on a CPU in float32), the
attention kernels."""

import pytest
import torch

from hf_prospector.engine import BlockedProjection, hardware, resolve_dtype


def test_dtype_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    expected = torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & flags else torch.float32
    assert resolve_dtype("auto", cpu) == expected  # this CPU's flags decide
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hardware, "_cpu_has_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu) == dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))


def test_cpu_class_names_the_fastest_matrix_arithmetic(monkeypatch):
    for flags, name in (({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AMX"), ({"avx2", "avx512_bf16"}, "AVX512-BF16"),
                        ({"avx2", "avx512f"}, "AVX512"), ({"sse4_2", "avx2", "fma"}, "AVX2"), ({"sse4_2"}, "older")):
        monkeypatch.setattr(hardware, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert hardware.cpu_class() == name
        assert hardware.native_bf16(torch.device("cpu")) == (name in ("AMX", "AVX512-BF16"))


def test_aligned_head_projects_as_the_head_does():
    torch.manual_seed(0)
    hidden = torch.randn(7, 16)
    for bias in (False, True):
        head = torch.nn.Linear(16, 50, bias=bias)  # 50 is not a multiple of 64
        aligned = hardware.AlignedHead(head)
        assert aligned.weight.shape == (64, 16)
        torch.testing.assert_close(aligned(hidden), head(hidden))
    assert isinstance(hardware.scoring_head(head, torch.device("cuda")), hardware.AlignedHead)
    even = torch.nn.Linear(16, 128)
    assert hardware.scoring_head(even, torch.device("cuda")) is even


def test_a_cpu_projects_float32_by_vocabulary_blocks():
    head = torch.nn.Linear(16, 50)
    blocked = hardware.scoring_head(head, torch.device("cpu"), torch.float32)
    assert isinstance(blocked, BlockedProjection) and blocked.head is head and blocked.block == hardware.CPU_VOCAB_BLOCK
    assert hardware.scoring_head(head, torch.device("cpu"), torch.bfloat16) is head  # bfloat16: not measured
    embedding = torch.nn.Embedding(50, 16)  # not a linear projection: applied as it is
    assert hardware.scoring_head(embedding, torch.device("cpu"), torch.float32) is embedding
    # Eager, a blocked projection takes as many positions at once as a compiled one; a whole one fewer.
    cpu = torch.device("cpu")
    assert hardware.head_chunk(cpu, False, torch.float32, blocked) == hardware.CPU_HEAD_CHUNK[torch.float32]
    assert hardware.head_chunk(cpu, False, torch.float32, head) == 64
    assert hardware.head_chunk(cpu, True, torch.float32, head) == hardware.CPU_HEAD_CHUNK[torch.float32]


def test_attention_kernels_leave_out_cudnn_on_cuda_only():
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with hardware.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with hardware.attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()
