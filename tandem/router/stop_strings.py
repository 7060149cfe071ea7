"""Stop strings on streamed text (pure).

The engine stops on token ids; stop STRINGS are applied where text exists, in
the router. Text that might be the start of a stop string is held back until
the next delta decides it, so a client never sees part of a stop string.
"""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add decoded text; return the text that is safe to emit now.
        After a stop string is found, `stopped` is true and the rest is dropped."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._pending + delta
        hit = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if hit >= 0:
            self.stopped = True
            self._pending = ""
            return text[:hit]
        hold = self._held_suffix(text)
        self._pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The stream ended without a stop string: release what was held back."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
