"""Per-device choices: the dtype, the token budget, how many positions the head projects at once, the attention
kernels and a padded output projection. Each is a function of the device so the engine's code stays the same
on a CPU and a GPU."""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F

from .projection import BlockedProjection

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3: no cuDNN attention to avoid
    sdpa_kernel = None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (CUDA with bf16; CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


def _cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """This CPU's flags (``/proc/cpuinfo``); empty where that is absent."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), ()))
    except OSError:
        return frozenset()


def cpu_class() -> str:
    """What this CPU's fastest matrix arithmetic is, which sets what ``dtype="auto"`` runs and how fast: ``AMX``,
    ``AVX512-BF16`` (both: bfloat16), ``AVX512``, ``AVX2`` (float32) or ``older``. Benchmarks report by it."""
    flags = _cpu_flags()
    for name, flag in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16"), ("AVX512", "avx512f"), ("AVX2", "avx2")):
        if flag in flags:
            return name
    return "older"


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 where the hardware computes it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return table[dtype]


def default_token_budget(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> int:
    """Tokens per micro-batch: small on CPU (the activations stay in cache), large on GPUs. bench: python
    bench/bench_utilisation.py --token-budgets 1024,2048,4096"""
    env = os.environ.get("HF_PROSPECTOR_TOKEN_BUDGET")
    if env:
        return int(env)
    if device.type == "cuda":
        return 32768
    return CPU_TOKEN_BUDGET.get(dtype, 2048)


def head_chunk(device: torch.device, compiled: bool, dtype: torch.dtype = torch.bfloat16,
               head: torch.nn.Module | None = None) -> int:
    """Positions projected at once by ``head`` (a :func:`scoring_head`). On a CPU the eager log-softmax makes
    several passes over its [positions x vocabulary] float32 block, which must stay in cache; compiled, they fuse
    into one pass and a larger block is best, as it is for a :class:`BlockedProjection`, whose blocks are small
    either way. GPUs want large blocks. bench: python bench/bench_utilisation.py --head-chunks 128,256,512"""
    if device.type == "cuda":
        return 1024
    if compiled or isinstance(head, BlockedProjection):
        return CPU_HEAD_CHUNK.get(dtype, 256)
    return 64


# CPU micro-batch settings per dtype. float32: token budgets 1,024 / 2,048 / 4,096 ran within 3% of each other
# (bench: python bench/bench_utilisation.py --dtypes float32 --token-budgets 1024,2048,4096 --skip-reference);
# positions projected at once and vocabulary block: python bench/bench_head.py
CPU_TOKEN_BUDGET = {torch.bfloat16: 2048, torch.float32: 2048}
CPU_HEAD_CHUNK = {torch.bfloat16: 256, torch.float32: 256}
CPU_VOCAB_BLOCK = 2048


def attention_kernels(device: torch.device):
    """The attention kernels the engine lets PyTorch choose from: on CUDA all but cuDNN's, which build an
    execution plan for every new input shape, and every micro-batch has a new shape. bench: python bench/bench_gpu.py"""
    if device.type != "cuda" or sdpa_kernel is None:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class AlignedHead(torch.nn.Module):
    """A linear output projection padded with zero rows to a multiple of 64, whose extra logits are cut off.

    GPU matrix units want aligned shapes: an unaligned vocabulary (GPT-2's 50,257) sends the projection to a slow
    fallback kernel. Costs one copy of the projection's weights. bench: python bench/bench_gpu.py"""

    def __init__(self, head: torch.nn.Linear, multiple: int = 64):
        super().__init__()
        self.vocab = head.out_features
        extra = -self.vocab % multiple
        self.weight = torch.nn.Parameter(F.pad(head.weight.detach(), (0, 0, 0, extra)), requires_grad=False)
        self.bias = None if head.bias is None else torch.nn.Parameter(F.pad(head.bias.detach(), (0, extra)),
                                                                      requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)[..., : self.vocab]


def scoring_head(head: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The output projection the engine applies: on CUDA an unaligned linear one is padded (:class:`AlignedHead`);
    on a CPU in float32 a linear one runs a block of the vocabulary at a time (:class:`BlockedProjection`;
    bfloat16 is not measured)."""
    if not isinstance(head, torch.nn.Linear):
        return head
    if device.type == "cuda" and head.out_features % 64:
        return AlignedHead(head)
    if device.type == "cpu" and dtype == torch.float32:
        return BlockedProjection(head, CPU_VOCAB_BLOCK)
    return head
