from __future__ import annotations

import pytest

from tandem.router.stop_strings import StopStrings


@pytest.mark.parametrize(
    ("stops", "deltas", "emitted", "stopped"),
    [
        ((), ["ab", "cd"], "abcd", False),
        (("x",), ["ab", "cd"], "abcd", False),
        (("cd",), ["ab", "cd", "ef"], "ab", True),
        (("cd",), ["abc", "de"], "ab", True),  # spans two deltas; "c" was held back
        (("cde",), ["abc", "dx"], "abcdx", False),  # held back, then released
        (("ab", "b"), ["xab"], "x", True),  # earliest match wins
        (("\n\n",), ["line\n", "\nnext"], "line", True),
        (("END",), ["E", "N", "D"], "", True),
        (("aa",), ["a"], "a", False),  # flush releases a held prefix
    ],
)
def test_stop_strings(stops, deltas, emitted, stopped) -> None:
    s = StopStrings(stops)
    out = "".join(s.feed(d) for d in deltas) + s.flush()
    assert out == emitted
    assert s.stopped is stopped
