"""The audit as a table (text) and a picture (PNG)."""

from __future__ import annotations

from pathlib import Path

from tandem.audit.figures import AuditFigures
from tandem.planner.signals import ROLES


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(f: AuditFigures, missing: tuple[str, ...] = ()) -> str:
    lines = [
        f"window {f.window_s:.0f}s, {f.requests} requests finished, {f.gpus} GPUs",
        f"{'role':<8} {'workers':>7} {'busy':>6} {'pressure':>8} {'need':>6} "
        f"{'right-size':>10} {'same GPUs':>9}  signal",
    ]
    for r in ROLES:
        x = f.roles[r]
        lines.append(
            f"{r:<8} {x.workers:>7} {_pct(x.busy):>6} {x.pressure:>8.2f} {x.need:>6.1f} "
            f"{x.right_size:>10} {x.at_same_gpus:>9}  {x.signal}"
        )
    a = f.attainment
    both = "-" if a.both_low is None else f"{_pct(a.both_low)}..{_pct(a.both_high)}"
    lines += [
        f"prefill/decode imbalance {f.imbalance:.2f} (0 = balanced, 1 = one role idle)",
        f"SLO attainment: TTFT {_pct(a.ttft)}, TPOT {_pct(a.tpot)}, both {both}",
        f"right size: {f.right_size_gpus} GPUs for this load at target "
        f"({_pct(f.idle_fraction)} of the pool's GPUs not needed)",
        f"best split of the same {f.gpus} GPUs: prefill {f.roles['prefill'].at_same_gpus}, "
        f"decode {f.roles['decode'].at_same_gpus}: carries {f.gain_at_same_gpus:.2f}x this load at target",
    ]
    lines += [f"did not answer: {m}" for m in missing]
    return "\n".join(lines)


def png(f: AuditFigures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(ROLES))
    busy = [f.roles[r].busy or 0.0 for r in ROLES]
    pressure = [f.roles[r].pressure for r in ROLES]
    left.bar([x - 0.2 for x in xs], busy, 0.4, label="busy fraction")
    left.bar([x + 0.2 for x in xs], pressure, 0.4, label="pressure (1 = at target)")
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.set_xticks(list(xs), list(ROLES))
    left.set_title("measured load per role")
    left.legend()
    now = [f.roles[r].workers for r in ROLES]
    right_size = [f.roles[r].right_size for r in ROLES]
    same = [f.roles[r].at_same_gpus for r in ROLES]
    for i, (vals, label) in enumerate(
        ((now, "now"), (same, f"best split of {f.gpus} GPUs"), (right_size, "right size"))
    ):
        right.bar([x + (i - 1) * 0.27 for x in xs], vals, 0.27, label=label)
    right.set_xticks(list(xs), list(ROLES))
    right.set_title("workers per role")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
