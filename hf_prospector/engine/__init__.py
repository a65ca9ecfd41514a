"""The scoring engine: token log-probabilities at chosen positions of many sequences, fast.

One concept per module: :mod:`.batching` (the :class:`Engine` and its micro-batches), :mod:`.hardware` (per-device
choices), :mod:`.projection` (hidden states to log-probabilities), :mod:`.compilation` (``torch.compile`` for long
runs), :mod:`.memory` (freed memory back to the OS) and :mod:`.prefix_cache` (the golden score's shared prefix).
Constants such as ``COMPILE_AFTER_S`` and ``FREED_MEMORY_SLACK`` live in their modules (patch them there).
"""

from .batching import Engine, Request, plan_batches
from .compilation import DeferredCompiler, resolve_compile
from .hardware import (AlignedHead, attention_kernels, cpu_class, default_token_budget, head_chunk, native_bf16,
                       resolve_dtype, scoring_head)
from .memory import release_freed_memory, resident_bytes
from .prefix_cache import SharedPrefixCache
from .projection import BlockedProjection, logprobs_of, target_logprobs

__all__ = ["AlignedHead", "BlockedProjection", "DeferredCompiler", "Engine", "Request", "SharedPrefixCache",
           "attention_kernels", "cpu_class", "default_token_budget", "head_chunk", "logprobs_of", "native_bf16",
           "plan_batches", "release_freed_memory", "resident_bytes", "resolve_compile", "resolve_dtype", "scoring_head",
           "target_logprobs"]
