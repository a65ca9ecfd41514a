"""The scoring engine: token log-probabilities at chosen positions of many sequences, fast.

Every scorer reduces to one request: "for each sequence, the log-probability of tokens
``ids[start:]`` given what precedes them". The engine

1. sorts the sequences by length (longest first) and packs them into micro-batches under a token
   budget (``batch rows x longest row <= token_budget``), right-padded with an attention mask;
2. runs the model's backbone once per micro-batch, then applies the output projection only at the
   scored positions (context tokens never pay for the vocabulary projection);
3. takes the log-softmax in float32, in chunks, and gathers the target tokens;
4. restores the original order.

On CUDA an out-of-memory error halves the micro-batch and retries. ``prefixed_logprobs`` serves the
golden score: one prefix (a one-shot example) is encoded once and its key/value cache reused for a
batch of continuations.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

# Positions whose logits are materialised at once: bounds the [positions x vocabulary] float32 buffer.
_HEAD_CHUNK = 1024


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (CUDA with bf16; CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def default_token_budget(device: torch.device) -> int:
    """Tokens per micro-batch: small on CPU (the activations stay in cache), large on GPUs."""
    env = os.environ.get("HF_PROSPECTOR_TOKEN_BUDGET")
    if env:
        return int(env)
    return 32768 if device.type == "cuda" else 2048


@dataclass
class Request:
    """Score ``ids[start:]``, each token predicted from the ones before it (so ``start >= 1``)."""

    ids: list[int]
    start: int


def plan_batches(lengths: list[int], token_budget: int, max_padding: float = 0.25) -> list[list[int]]:
    """Group indices, longest first, so that rows x longest row stays within ``token_budget`` and no row
    is padded by more than ``max_padding`` of the longest (padding is computed and thrown away)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        longest = lengths[batches[-1][0]] if batches else 0
        if batches and (len(batches[-1]) + 1) * longest <= token_budget and lengths[i] >= (1 - max_padding) * longest:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class Engine:
    """A causal LM on one device, scoring :class:`Request` lists. Shared by every scorer.

    The model is moved to ``device`` and ``dtype`` in place (``nn.Module.to``), as transformers does.
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 token_budget: int | None = None):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.token_budget = token_budget or default_token_budget(self.device)
        self.pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
        self.backbone = self.model.base_model
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self.forward_passes = 0  # micro-batches run; tests count work with it
        self._head_only = self._check_head_shortcut()

    # -- projection -----------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _check_head_shortcut(self) -> bool:
        """Backbone + output projection must equal the model's own logits; otherwise use the full forward.

        Guards against architectures that rescale logits in ways this module does not know of.
        """
        ids = torch.tensor([[self.pad_id] * 3], device=self.device)
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            mine = self._logits(self.backbone(input_ids=ids).last_hidden_state)
        return bool(torch.allclose(full, mine, atol=1e-3, rtol=1e-3))

    def _gather_logprobs(self, hidden, rows, cols, targets) -> torch.Tensor:
        out = []
        for s in range(0, len(rows), _HEAD_CHUNK):
            h = hidden[rows[s:s + _HEAD_CHUNK], cols[s:s + _HEAD_CHUNK]]
            logits = self._logits(h)
            t = targets[s:s + _HEAD_CHUNK]
            out.append(logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    # -- batches --------------------------------------------------------------------------------
    def _run_batch(self, reqs: list[Request], past=None) -> list[np.ndarray]:
        """Log-probs for one right-padded micro-batch (optionally continuing a cached prefix)."""
        width = max(len(r.ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, r in enumerate(reqs):
            ids[b, : len(r.ids)] = torch.tensor(r.ids)
            mask[b, : len(r.ids)] = 1
            n = len(r.ids) - r.start
            rows.append(torch.full((n,), b))
            cols.append(torch.arange(r.start - 1, len(r.ids) - 1))
            targets.append(ids[b, r.start: len(r.ids)])
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows, cols, targets = (torch.cat(x).to(self.device) for x in (rows, cols, targets))
        kwargs = {}
        if past is not None:
            cache, plen = past
            mask = torch.cat([torch.ones((len(reqs), plen), dtype=mask.dtype, device=self.device), mask], dim=1)
            kwargs = dict(past_key_values=cache,
                          position_ids=torch.arange(plen, plen + width, device=self.device).expand(len(reqs), -1))
        self.forward_passes += 1
        if self._head_only:
            hidden = self.backbone(input_ids=ids, attention_mask=mask, use_cache=past is not None,
                                   **kwargs).last_hidden_state
            lp = self._gather_logprobs(hidden, rows, cols, targets)
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, **kwargs).logits
            sel = logits[rows, cols].float()
            lp = sel.gather(1, targets[:, None])[:, 0] - torch.logsumexp(sel, dim=-1)
        lp = lp.float().cpu().numpy()
        bounds = np.cumsum([0] + [len(r.ids) - r.start for r in reqs])
        return [lp[bounds[i]: bounds[i + 1]] for i in range(len(reqs))]

    def _run_planned(self, reqs: list[Request], past=None) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(reqs)
        pending = plan_batches([len(r.ids) for r in reqs], self.token_budget)
        while pending:
            batch = pending.pop(0)
            try:
                cache = None
                if past is not None:
                    cache = copy.deepcopy(past[0])
                    cache.batch_repeat_interleave(len(batch))
                results = self._run_batch([reqs[i] for i in batch], None if past is None else (cache, past[1]))
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                self.token_budget = max(self.token_budget // 2, 1)
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            for i, r in zip(batch, results):
                out[i] = r
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def logprobs(self, requests: list[Request]) -> list[np.ndarray]:
        """Per request, the float32 log-probabilities of ``ids[start:]``, in the order given."""
        for r in requests:
            if not 1 <= r.start <= len(r.ids):
                raise ValueError(f"request start {r.start} outside 1..{len(r.ids)}")
        return self._run_planned(requests)

    @torch.inference_mode()
    def prefixed_logprobs(self, prefix: list[int], continuations: list[Request]) -> list[np.ndarray]:
        """Like :meth:`logprobs` for ``prefix + c.ids`` for each continuation, encoding the prefix once.

        ``c.start`` indexes into ``c.ids`` and may be 0 (the first continuation token is predicted from the
        prefix's last position).
        """
        if not prefix:
            raise ValueError("prefixed_logprobs needs a non-empty prefix")
        ids = torch.tensor([prefix], device=self.device)
        self.forward_passes += 1
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        last = out.logits[0, -1].float()
        first = torch.log_softmax(last, dim=-1)
        # Continuations are scored from their own positions; a start of 0 needs the prefix's last logits.
        shifted = [Request(c.ids, max(c.start, 1)) for c in continuations]
        results = self._run_planned(shifted, past=(out.past_key_values, len(prefix)))
        for k, c in enumerate(continuations):
            if c.start == 0:
                results[k] = np.concatenate([[first[c.ids[0]].item()], results[k]]).astype(np.float32)
        return results
