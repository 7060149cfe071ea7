"""Latency percentiles over the replay, as a PNG (matplotlib, imported only here)."""

from __future__ import annotations


def plot_over_time(data: dict[str, object], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = data["over_time"]
    assert isinstance(rows, list)
    t = [r["t_s"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, style in (("ttft_p50", "-"), ("ttft_p99", "--")):
        ax1.plot(t, [r[key] for r in rows], style, label=key.replace("_", " "))
    for key, style in (("tpot_p50", "-"), ("tpot_p99", "--")):
        ax2.plot(t, [r[key] for r in rows], style, label=key.replace("_", " "))
    ax1.set_ylabel("TTFT (s)")
    ax2.set_ylabel("TPOT (s)")
    ax2.set_xlabel("send time in the replay (s)")
    ax1.legend()
    ax2.legend()
    ax1.set_title(f"{data.get('model')}: {data['workload']['source']}")  # type: ignore[index]
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
