"""Build a request trace whose mix shifts from prompt-heavy to output-heavy.

    .venv/bin/python bench/shifting_trace.py --out tests/data/shifting-trace.csv \\
        --traces ../shared/traces --phase-s 40 --prompt-rate 0.5 --output-rate 1.2 --offset 30

Every figure comes from the public traces in `../shared/traces` (see their README):

- Arrival times: consecutive rows of `azure_conv_2023.csv` (a production chat
  service, close to Poisson), kept as recorded and then scaled, one factor per
  phase, so that phase A offers `--prompt-rate` and phase B `--output-rate`
  requests per second on average; the factors are printed and written in the
  file's companion `.json`.
- Phase A (prompt-heavy, the first `--phase-s` seconds): lengths of consecutive
  `azure_code_2023.csv` rows (long prompts, short answers), taking the rows that
  fit the served context (prompt + output <= `--max-model-len`) and whose prompt
  is at least `--min-prompt` tokens (so the router ships it to a prefill worker).
- Phase B (output-heavy, the next `--phase-s` seconds): lengths of consecutive
  ShareGPT rows with a prompt of at most `--max-short-prompt` tokens and an
  answer of `--min-output`..`--max-output` tokens (long answers to short prompts).

Rows are taken in file order from `--offset` on; nothing is random. The output is
`TIMESTAMP,ContextTokens,GeneratedTokens` with TIMESTAMP in seconds from the
start (the format `tandem bench serve --trace` and tandem.loadgen.trace read).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tandem.loadgen.trace import read_trace


@dataclass(frozen=True)
class ShiftSpec:
    phase_s: float = 30.0  # length of each phase after scaling, seconds
    prompt_rate: float = 0.5  # phase A requests per second after scaling
    output_rate: float = 1.2  # phase B requests per second after scaling
    max_model_len: int = 2048
    min_prompt: int = 512  # phase A prompts: at least this long
    max_short_prompt: int = 200  # phase B prompts: at most this long
    min_output: int = 200  # phase B answers: this long or longer
    max_output: int = 800
    offset: int = 0  # first row used of each source

    def __post_init__(self) -> None:
        if not (self.phase_s > 0 and self.prompt_rate > 0 and self.output_rate > 0):
            raise ValueError("--phase-s, --prompt-rate and --output-rate must be > 0")
        if not 0 < self.max_short_prompt < self.min_prompt < self.max_model_len:
            raise ValueError("need 0 < --max-short-prompt < --min-prompt < --max-model-len")
        if not 0 < self.min_output <= self.max_output < self.max_model_len - self.max_short_prompt:
            raise ValueError("need 0 < --min-output <= --max-output, and the answers must fit")


@dataclass(frozen=True)
class Row:
    at_s: float
    prompt_tokens: int
    output_tokens: int
    phase: str  # "prompt-heavy" | "output-heavy"


def prompt_heavy(code: Iterator[tuple[int, int]], spec: ShiftSpec) -> Iterator[tuple[int, int]]:
    for p, o in code:
        if p >= spec.min_prompt and p + o <= spec.max_model_len:
            yield p, o


def output_heavy(sharegpt: Iterator[tuple[int, int]], spec: ShiftSpec) -> Iterator[tuple[int, int]]:
    for p, o in sharegpt:
        if 0 < p <= spec.max_short_prompt and spec.min_output <= o <= spec.max_output:
            yield p, o


def time_scale(arrivals: list[float], rate: float) -> float:
    """The factor that makes the recorded arrivals offer `rate` requests/s."""
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        raise ValueError("need at least two distinct arrival times")
    recorded_rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return recorded_rate / rate


def _phase(
    arrivals: list[float], start_s: float, spec: ShiftSpec, rate: float
) -> tuple[list[float], float, int]:
    """Scaled offsets of one phase (from `start_s`), its factor, and the rows it used."""
    n = max(2, round(spec.phase_s * rate) + 1)
    if len(arrivals) < n:
        raise ValueError("not enough recorded arrivals; lower the rates or --phase-s")
    scale = time_scale(arrivals[:n], rate)
    times = [start_s + (t - arrivals[0]) * scale for t in arrivals]
    kept = [t for t in times if t < start_s + spec.phase_s]
    return kept, scale, len(kept)


def shift(
    arrivals: list[float],
    code: Iterator[tuple[int, int]],
    sharegpt: Iterator[tuple[int, int]],
    spec: ShiftSpec,
) -> tuple[list[Row], dict[str, float]]:
    """Phase A: scaled arrivals with prompt-heavy lengths for phase_s seconds; then
    phase B: the next recorded arrivals, scaled for its own rate, output-heavy lengths."""
    a_times, a_scale, used = _phase(arrivals, 0.0, spec, spec.prompt_rate)
    b_times, b_scale, _ = _phase(arrivals[used:], spec.phase_s, spec, spec.output_rate)
    rows: list[Row] = []
    for phase, times, source in (
        ("prompt-heavy", a_times, prompt_heavy(code, spec)),
        ("output-heavy", b_times, output_heavy(sharegpt, spec)),
    ):
        for at in times:
            p, o = next(source, (0, 0))
            if p == 0:
                raise ValueError(f"the {phase} source ran out of rows; lower the rates")
            rows.append(Row(round(at, 4), p, o, phase))
    return rows, {"prompt-heavy": a_scale, "output-heavy": b_scale}


def _pairs(path: Path, prompt_col: str, output_col: str, offset: int) -> Iterator[tuple[int, int]]:
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= offset:
                yield int(row[prompt_col]), int(row[output_col])


def _arrivals(path: Path, spec: ShiftSpec) -> list[float]:
    # Enough recorded arrivals for both phases at the scaled rate (+ margin), from --offset.
    wanted = int(spec.phase_s * (spec.prompt_rate + spec.output_rate) * 1.5) + 10
    recorded = read_trace(path, max_requests=spec.offset + wanted)
    return [r.at_s for r in recorded[spec.offset :]]


def summary(rows: list[Row], scale: dict[str, float], spec: ShiftSpec) -> dict[str, object]:
    phases = {}
    for name in ("prompt-heavy", "output-heavy"):
        got = [r for r in rows if r.phase == name]
        n = max(1, len(got))
        phases[name] = {
            "requests": len(got),
            "time_scale": scale[name],
            "mean_prompt_tokens": sum(r.prompt_tokens for r in got) / n,
            "mean_output_tokens": sum(r.output_tokens for r in got) / n,
            "prompt_tokens_per_s": sum(r.prompt_tokens for r in got) / spec.phase_s,
            "output_tokens_per_s": sum(r.output_tokens for r in got) / spec.phase_s,
        }
    return {
        "spec": asdict(spec),
        "time_scale_note": "each phase's recorded azure_conv_2023 inter-arrival times are "
        "multiplied by its time_scale",
        "sources": {
            "arrivals": "azure_conv_2023.csv",
            "prompt-heavy": "azure_code_2023.csv",
            "output-heavy": "sharegpt_lengths.csv",
        },
        "phases": phases,
    }


def write(rows: list[Row], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in rows:
            w.writerow([f"{r.at_s:.4f}", r.prompt_tokens, r.output_tokens])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    for field, default in asdict(ShiftSpec()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    args = p.parse_args(argv)
    try:
        spec = ShiftSpec(**{k: getattr(args, k) for k in asdict(ShiftSpec())})
        rows, scale = shift(
            _arrivals(args.traces / "azure_conv_2023.csv", spec),
            _pairs(
                args.traces / "azure_code_2023.csv", "ContextTokens", "GeneratedTokens", spec.offset
            ),
            _pairs(
                args.traces / "sharegpt_lengths.csv",
                "num_prefill_tokens",
                "num_decode_tokens",
                spec.offset,
            ),
            spec,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"shifting_trace: {exc}") from None
    write(rows, args.out)
    info = summary(rows, scale, spec)
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
