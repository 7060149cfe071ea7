"""Write the InferencePool CRD from tandem/api to crds/ and the Helm chart's copy.

`make crds` runs this; tests/api/test_crd_files.py fails when the files are stale.
`--check` exits 1 (and writes nothing) when any file differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tandem.api.crd import crd_yaml  # noqa: E402

TARGETS = (
    ROOT / "crds" / "inferencepools.tandem.dev.yaml",
    ROOT / "charts" / "tandem" / "crds" / "inferencepools.tandem.dev.yaml",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    text = crd_yaml()
    stale = [t for t in TARGETS if not t.exists() or t.read_text() != text]
    if args.check:
        for t in stale:
            print(f"stale: {t.relative_to(ROOT)} (run `make crds`)", file=sys.stderr)
        return 1 if stale else 0
    for t in stale:
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text(text)
        print(f"wrote {t.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
