"""The pods as the planner is told about them: steps in flight count as draining, pods
not scraped still hold their GPUs."""

from __future__ import annotations

from tandem.operator.flips import PodView
from tandem.operator.signal_views import for_planner, pod_view, reports, scraped
from tandem.planner import PoolSignals, WorkerSignal


def test_pods_with_steps_in_flight_are_draining_and_unscraped_pods_are_listed() -> None:
    signals = PoolSignals(
        workers=(WorkerSignal("d0", "decode", busy=0.5), WorkerSignal("f1", "decode", busy=0.1)),
        window_s=1.0,
    )
    views = [
        PodView("d0", "decode", flexible=False),
        PodView("f1", "decode", flexible=True, flip_to="prefill"),
        PodView("f2", "pending", flexible=True, ready=False),
        PodView("f3", "decode", flexible=True, deleting=True),
    ]
    got = {w.name: w for w in for_planner(signals, views).workers}
    assert set(got) == {"d0", "f1", "f2"}  # a pod going away holds nothing
    assert not got["d0"].flexible and not got["d0"].draining and got["d0"].busy == 0.5
    assert got["f1"].draining and got["f1"].flexible
    assert (got["f2"].role, got["f2"].ready, got["f2"].draining) == ("decode", False, True)


def pod(role: str, ready: bool = True, **meta: object) -> dict[str, object]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": "x", "labels": {"tandem.dev/role": role}, **meta},
            "status": {"conditions": conditions}}  # fmt: skip


def test_which_pods_are_scraped() -> None:
    assert scraped(pod("decode"))
    assert not scraped(pod("pending"))  # serves nothing yet
    assert not scraped(pod("decode", ready=False))
    assert not scraped(pod("prefill", deletionTimestamp="2026-01-01T00:00:00Z"))


def test_pod_view_reads_marks_and_the_workers_report() -> None:
    p = pod("decode", annotations={"tandem.dev/scale-down": "drain"})
    p["metadata"]["labels"]["tandem.dev/flexible"] = "true"  # type: ignore[index]
    signals = PoolSignals(workers=(WorkerSignal("x", "prefill", running=2, waiting=1),), window_s=1)
    view = pod_view(p, reports(signals)["x"])
    assert (view.flexible, view.scale_down, view.worker_role, view.load) == (
        True,
        "drain",
        "prefill",
        3.0,
    )
