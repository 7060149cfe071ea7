"""Utilization and queue depth per role over time, as a PNG (matplotlib, imported only here)."""

from __future__ import annotations

from typing import Any


def plot_run(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = result["over_time"]
    t = [r["t_s"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for role in ("prefill", "decode", "both"):
        if any(role in r["busy"] for r in rows):
            ax1.plot(t, [r["busy"].get(role, float("nan")) for r in rows], label=f"{role} busy")
            ax2.plot(t, [r["workers"].get(role, 0) for r in rows], label=f"{role} workers")
    for key in ("router", "prefill", "decode"):
        ax3.plot(t, [r["queue"][key] for r in rows], label=f"{key} queue")
    ax1.set_ylabel("busy fraction")
    ax1.set_ylim(0, 1.05)
    ax2.set_ylabel("workers")
    ax3.set_ylabel("requests waiting")
    ax3.set_xlabel("simulated time (s)")
    for ax in (ax1, ax2, ax3):
        ax.legend(loc="upper right", fontsize=8)
    ax1.set_title(
        f"{result['policy']} on {result['gpus']} GPUs: attainment {result['slo_attainment']:.1%}, "
        f"goodput {result['goodput_rps_per_gpu']:.3g} req/s/GPU"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
