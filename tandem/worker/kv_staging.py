"""Reading a KV chunk off the GPU without stalling the engine.

The engine copies a chunk's blocks on its own stream and records an event
right after (`KVChunk.ready`). By the time a transport thread handles the
chunk, that stream already holds later layers' work; a plain `.cpu()` or
`copy_` would wait for all of it and serialize shipping with compute. Inside
`after_ready(chunk)`, copies run on a side stream that waits for that event
alone, so shipping layer L overlaps computing layers L+1...
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch


class _Chunk(Protocol):
    @property
    def k(self) -> torch.Tensor: ...
    @property
    def ready(self) -> Any: ...


_streams: dict[int, torch.cuda.Stream] = {}
_lock = threading.Lock()


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One transfer stream per device, shared by the transports' threads."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        stream = _streams.get(index)
        if stream is None:
            stream = _streams[index] = torch.cuda.Stream(device=index)
        return stream


@contextmanager
def after_ready(chunk: _Chunk) -> Iterator[torch.cuda.Stream | None]:
    """Run the body's CUDA copies on a side stream ordered after the chunk was
    made (and after nothing else). Yields the stream (None for CPU chunks)."""
    device = chunk.k.device
    if device.type != "cuda":
        yield None
        return
    stream = side_stream(device)
    ready = chunk.ready
    if ready is None:  # a chunk made elsewhere: order after everything queued so far
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(device))
    stream.wait_event(ready)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield stream
