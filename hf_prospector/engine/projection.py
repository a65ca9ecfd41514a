"""From the backbone's hidden states to log-probabilities: the output projection applied only at the scored
positions, in chunks, with a float32 log-softmax (context tokens never pay for the vocabulary projection)."""

from __future__ import annotations

import torch


def logprobs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of each row of ``logits`` at its target, without materialising the whole log-softmax."""
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma-2-style logit soft-capping (``softcap * tanh(logits / softcap)``); none without a cap."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def target_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    softcap: float | None) -> torch.Tensor:
    """log p(target) at each row of ``hidden``: the output projection and a float32 log-softmax."""
    if isinstance(head, BlockedProjection):
        return head(hidden, targets, softcap)
    return logprobs_of(capped(head(hidden).float(), softcap), targets)


class BlockedProjection(torch.nn.Module):
    """A linear output projection and its log-softmax at the targets, ``block`` rows of the vocabulary at a time.

    The whole [positions x vocabulary] logits never exist: each block's logits, computed vocabulary-major
    (``weight_block @ hidden^T``), stay in cache for their log-sum-exp, and the target's logit is its own dot
    product. A whole block of logits is fresh memory for every chunk of positions, which a CPU pays for in page
    faults and cache misses: in float32 on a CPU the projection ran at about 60% of the matmul rate that way, in
    blocks at about 90% (compiled, 256 positions). bench: python bench/bench_head.py
    """

    def __init__(self, head: torch.nn.Linear, block: int):
        super().__init__()
        self.head = head
        self.block = block

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
        """log p(target) at each row of ``hidden`` ([positions x hidden size])."""
        weight, bias, columns = self.head.weight, self.head.bias, hidden.T
        blocks = []
        for start in range(0, weight.shape[0], self.block):
            logits = weight[start:start + self.block] @ columns
            if bias is not None:
                logits = logits + bias[start:start + self.block, None]
            blocks.append(torch.logsumexp(capped(logits.float(), softcap), dim=0))
        target = (weight[targets] * hidden).sum(-1)
        if bias is not None:
            target = target + bias[targets]
        return capped(target.float(), softcap) - torch.logsumexp(torch.stack(blocks), dim=0)


def gather_logprobs(project, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor,
                    chunk: int) -> torch.Tensor:
    """``project(hidden[rows, cols], targets)`` (a :func:`target_logprobs`) over ``chunk`` positions at a time."""
    out = [project(hidden[rows[s:s + chunk], cols[s:s + chunk]], targets[s:s + chunk])
           for s in range(0, len(rows), chunk)]
    return torch.cat(out) if out else torch.empty(0, device=hidden.device)


def head_matches_model(model, backbone, head: torch.nn.Module, softcap: float | None, device: torch.device) -> bool:
    """Backbone + output projection give the model's own log-probabilities; otherwise the engine runs the full
    forward. Guards against architectures that rescale logits in ways this module does not know of."""
    ids = torch.arange(8, device=device) % model.config.vocab_size
    with torch.inference_mode():
        full = model(input_ids=ids[None]).logits[0].float().log_softmax(-1)
        hidden = backbone(input_ids=ids[None]).last_hidden_state[0]
        mine = target_logprobs(head, hidden, ids, softcap)
    return bool(torch.allclose(full.gather(1, ids[:, None])[:, 0], mine, atol=1e-3, rtol=1e-3))
