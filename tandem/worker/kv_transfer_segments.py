"""Shared-memory segments for KV transfer: files under /dev/shm, mapped into
both processes. The sender's segments live in a pool (reused after a completed
transfer), the receiver's mappings in a small cache; segments of crashed
processes are swept at start-up."""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import re
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import torch

from tandem.worker.kv_transfer import BadKVMessage, KVLayout

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
#: Idle segments kept for reuse by one process, at most (see SegmentPool).
POOL_MAX_BYTES = 2 << 30
PREFIX = "tandem-kv-"
# tandem-kv-<pid namespace>-<pid>-<random>: the namespace keeps the stale-segment
# sweep from judging a pid of another container sharing this /dev/shm.
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-[0-9a-f]{{16}}$")


def _pid_namespace() -> int:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        return int(link[link.index("[") + 1 : -1])
    except (OSError, ValueError):
        return 0


def segment_name() -> str:
    return f"{PREFIX}{_pid_namespace()}-{os.getpid()}-{uuid.uuid4().hex[:16]}"


class MappedSegment:
    """A mapped segment file; the byte tensor views it without copying."""

    def __init__(self, path: Path, size: int | None, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self.path = path
        self._fd = os.open(path, flags, 0o600)
        try:
            if create:
                assert size is not None
                # Reserve the pages now: a full tmpfs fails here with ENOSPC
                # instead of killing the process with SIGBUS on a later write.
                os.posix_fallocate(self._fd, 0, size)
            self.size = os.fstat(self._fd).st_size
            # Map every page up front: one kernel call instead of a fault per page
            # on first touch (131k faults for a 512 MiB transfer).
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._mm: mmap.mmap | None = mmap.mmap(self._fd, self.size, flags=flags)
            self.bytes: torch.Tensor | None = torch.frombuffer(self._mm, dtype=torch.uint8)
        except BaseException:
            os.close(self._fd)
            if create:
                path.unlink(missing_ok=True)
            raise

    def view(self, offset: int, layout: KVLayout, num_blocks: int) -> torch.Tensor:
        """[num_blocks, block_size, num_kv_heads, head_dim] at `offset`."""
        assert self.bytes is not None
        nbytes = num_blocks * layout.block_bytes
        if offset + nbytes > self.size:
            raise BadKVMessage(
                f"shm region [{offset}, {offset + nbytes}) outside segment {self.path.name} "
                f"of {self.size} bytes"
            )
        raw = self.bytes[offset : offset + nbytes]
        return raw.view(layout.torch_dtype()).view(num_blocks, *layout.block_shape)

    def removed(self) -> bool:
        """True once the segment's file is gone (the sender removed it)."""
        return self._mm is not None and os.fstat(self._fd).st_nlink == 0

    def close(self, unlink: bool) -> None:
        self.bytes = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a tensor still views it: the mapping goes with it
                log.debug("shm segment %s still referenced at close", self.path.name)
            self._mm = None
            os.close(self._fd)
        if unlink:
            self.path.unlink(missing_ok=True)


class SegmentPool:
    """Idle sender segments, reused by later transfers.

    Creating a segment costs far more than filling it (for 512 MiB: ~0.3 s to
    allocate and zero the pages vs ~0.04 s to copy the KV in), so a segment
    whose transfer completed is kept for the next one, up to `max_bytes`. A
    segment of a failed or cancelled transfer is destroyed at once: a receiver
    may still be reading it. `clear` runs at shutdown (and at exit).
    """

    def __init__(self, shm_dir: Path, max_bytes: int = POOL_MAX_BYTES) -> None:
        self.shm_dir = shm_dir
        self.max_bytes = max_bytes
        self._idle: list[MappedSegment] = []
        self._lock = threading.Lock()
        atexit.register(self.clear)

    def take(self, size: int) -> MappedSegment:
        with self._lock:
            fits = [m for m in self._idle if m.size >= size]
            if fits:
                best = min(fits, key=lambda m: m.size)
                self._idle.remove(best)
                return best
        return MappedSegment(self.shm_dir / segment_name(), _round_up(size), create=True)

    def give_back(self, mapping: MappedSegment, reuse: bool) -> None:
        with self._lock:
            if reuse and mapping.size + self.idle_bytes() <= self.max_bytes:
                self._idle.append(mapping)
                return
        mapping.close(unlink=True)

    def idle_bytes(self) -> int:
        return sum(m.size for m in self._idle)

    def idle_names(self) -> list[str]:
        with self._lock:
            return [m.path.name for m in self._idle]

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for m in idle:
            m.close(unlink=True)


def _round_up(size: int) -> int:
    """Segment sizes in powers of two (>= 1 MiB) so different prompts share segments."""
    return max(1 << 20, 1 << (size - 1).bit_length())


class ReceiverMaps:
    """Segments mapped by this (receiving) process, shared by its PushKV streams.

    MappedSegment is the costly part of receiving (every page table entry of the
    segment), and senders reuse their segments, so mappings are kept: a few at
    most, and none whose file the sender has removed (its pages would otherwise
    stay alive through our mapping). A mapping a stream still uses is closed
    when that stream releases it.
    """

    def __init__(self, shm_dir: Path, max_entries: int = 4) -> None:
        self.shm_dir = shm_dir
        self.max_entries = max_entries
        self._maps: OrderedDict[str, MappedSegment] = OrderedDict()
        self._users: dict[int, int] = {}  # id(mapping) -> streams using it
        self._lock = threading.Lock()

    def acquire(self, name: str) -> MappedSegment:
        with self._lock:
            self._evict([n for n, m in self._maps.items() if m.removed()])
            mapping = self._maps.get(name)
            if mapping is None:
                mapping = self._maps[name] = MappedSegment(self.shm_dir / name, None, create=False)
            self._maps.move_to_end(name)
            self._users[id(mapping)] = self._users.get(id(mapping), 0) + 1
            self._evict(list(self._maps)[: max(0, len(self._maps) - self.max_entries)])
            return mapping

    def release(self, mapping: MappedSegment) -> None:
        with self._lock:
            left = self._users[id(mapping)] - 1
            if left:
                self._users[id(mapping)] = left
                return
            del self._users[id(mapping)]
            if self._maps.get(mapping.path.name) is not mapping:  # evicted while in use
                mapping.close(unlink=False)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._maps)

    def clear(self) -> None:
        with self._lock:
            self._evict(list(self._maps))

    def _evict(self, names: list[str]) -> None:
        for name in names:
            mapping = self._maps.pop(name)
            if id(mapping) not in self._users:
                mapping.close(unlink=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove segments left by dead processes of this pid namespace; return their names."""
    ns = _pid_namespace()
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for path in shm_dir.iterdir():
            m = _NAME.match(path.name)
            if m and int(m.group(1)) == ns and not _alive(int(m.group(2))):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    if removed:
        log.info("removed %d stale KV shared-memory segments", len(removed))
    return removed


def valid_segment_name(name: str) -> bool:
    """Only names this module makes (no paths, no other files under /dev/shm)."""
    return _NAME.match(name) is not None
