"""Tandem: disaggregated prefill/decode LLM serving.

`from tandem import LLM, SamplingParams` is the offline API; it imports torch
lazily so that the control plane (router, operator) never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tandem.sampling import InvalidRequest, SamplingParams

if TYPE_CHECKING:
    from tandem.worker.llm import LLM, CompletionOutput

__all__ = ["LLM", "CompletionOutput", "InvalidRequest", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("LLM", "CompletionOutput"):
        # Resolved on first use so that `import tandem` (router, operator) never loads torch.
        llm = importlib.import_module("tandem.worker.llm")
        return getattr(llm, name)
    raise AttributeError(name)
