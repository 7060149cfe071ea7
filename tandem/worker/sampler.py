"""Token sampling over a batch of logits rows, each with its own parameters.

Greedy rows take the argmax. Other rows apply temperature, top-k and top-p,
then draw with the exponential-race trick (argmax of p / E with E ~ Exp(1)),
which equals sampling from p and lets each seeded request use its own
generator, so its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tandem.sampling import SamplingParams


@dataclass(frozen=True)
class SampleSpec:
    params: SamplingParams
    generator: torch.Generator | None  # None: the engine's shared generator
    suppress_ids: tuple[int, ...] = ()  # e.g. EOS before min_tokens


def sample(logits: torch.Tensor, specs: Sequence[SampleSpec], shared: torch.Generator) -> list[int]:
    """logits: [N, vocab] float32, one row per spec."""
    out = torch.empty(len(specs), dtype=torch.long)
    greedy_rows = [i for i, s in enumerate(specs) if s.params.greedy and not s.suppress_ids]
    if greedy_rows:
        out[greedy_rows] = logits[greedy_rows].argmax(dim=-1).cpu()
    for i, spec in enumerate(specs):
        if i in greedy_rows:
            continue
        row = logits[i].clone()
        if spec.suppress_ids:
            row[list(spec.suppress_ids)] = float("-inf")
        if spec.params.greedy:
            out[i] = int(row.argmax())
            continue
        probs = _probs(row, spec.params)
        gen = spec.generator or shared
        noise = torch.empty(probs.shape, dtype=torch.float32, device="cpu").exponential_(generator=gen)
        out[i] = int((probs.cpu() / noise).argmax())
    return out.tolist()


def _probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    row = row / p.temperature
    if p.top_k > 0 and p.top_k < row.numel():
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        # Keep the smallest prefix whose mass reaches top_p (always >= 1 token).
        drop = (cum - sorted_p) >= p.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
        probs = probs / probs.sum()
    return probs
