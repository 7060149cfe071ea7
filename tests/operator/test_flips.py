"""The flip / scale-down state machine: pods + marks + desired counts -> next steps."""

from __future__ import annotations

import pytest

from tandem.operator.flips import PodView, Step, converged, decision_steps, next_steps
from tandem.operator.layout import Counts


def fixed(name: str, role: str) -> PodView:
    return PodView(name, role, flexible=False, worker_role=role)


def flex(name: str, role: str, **kw: object) -> PodView:
    kw.setdefault("worker_role", role if role != "pending" else "decode")
    return PodView(name, role, flexible=True, **kw)  # type: ignore[arg-type]


BASE = [fixed("p0", "prefill"), fixed("d0", "decode")]

CASES = [
    ("settled pool: nothing to do", [*BASE, flex("f1", "decode")], Counts(1, 2), []),
    ("a pending pod gets the role that is short",
     [*BASE, flex("f1", "pending")], Counts(2, 1), [Step("assign", "f1", "prefill")]),
    ("pending pods fill the shortest role first",
     [*BASE, flex("f1", "pending"), flex("f2", "pending")], Counts(2, 2),
     [Step("assign", "f1", "prefill"), Step("assign", "f2", "decode")]),
    ("a pending pod nobody needs is removed (it never served)",
     [*BASE, flex("f1", "pending")], Counts(1, 1), [Step("mark_remove", "f1")]),
    ("a flip in flight runs once the pod is Ready",
     [*BASE, flex("f1", "decode", flip_to="prefill")], Counts(2, 1),
     [Step("flip", "f1", "prefill")]),
    ("a flip waits for a pod that is not Ready",
     [*BASE, flex("f1", "pending", flip_to="prefill", ready=False)], Counts(2, 1), []),
    ("a drain in flight continues, may release when the others are Ready",
     [*BASE, flex("f1", "decode", scale_down="drain"), flex("f2", "decode")], Counts(1, 2),
     [Step("drain", "f1", release=True)]),
    ("no release while another flexible pod starts (the ReplicaSet would delete that one)",
     [*BASE, flex("f1", "decode", scale_down="drain"), flex("f2", "pending", ready=False)],
     Counts(1, 2), [Step("drain", "f1", release=False), Step("assign", "f2", "decode")]),
    ("a drained pod is deleted",
     [*BASE, flex("f1", "decode", scale_down="drained")], Counts(1, 1), [Step("delete", "f1")]),
    ("a pod already going away is left alone",
     [*BASE, flex("f1", "decode", scale_down="drained", deleting=True)], Counts(1, 1), []),
    ("counts disagree (operator died before marking): the least-loaded flexible pod flips",
     [*BASE, flex("f1", "decode", load=3), flex("f2", "decode", load=1)], Counts(2, 2),
     [Step("assign", "f2", "prefill")]),
    ("too many of a role: the least-loaded flexible pod is removed",
     [*BASE, flex("f1", "decode", load=0), flex("f2", "decode", load=2)], Counts(1, 2),
     [Step("mark_remove", "f1")]),
    ("fixed pods never move",
     [fixed("p0", "prefill"), fixed("d0", "decode"), fixed("d1", "decode")], Counts(2, 1), []),
    ("a worker reporting another role than its label goes back to the label",
     [*BASE, flex("f1", "prefill", worker_role="decode")], Counts(2, 1),
     [Step("assign", "f1", "prefill")]),
    ("pods moving count for the role they go to: no second flip",
     [*BASE, flex("f1", "decode", flip_to="prefill"), flex("f2", "decode")], Counts(2, 2),
     [Step("flip", "f1", "prefill")]),
]  # fmt: skip


@pytest.mark.parametrize(("pods", "desired", "steps"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_next_steps(pods: list[PodView], desired: Counts, steps: list[Step]) -> None:
    assert list(next_steps(pods, desired)) == steps


def test_a_restart_at_any_point_of_a_flip_finishes_it_once() -> None:
    """Replay the flip's writes one by one; after each, the machine asks only for the rest."""
    desired = Counts(2, 1)
    marked = [*BASE, flex("f1", "decode", flip_to="prefill")]
    switched = [*BASE, flex("f1", "decode", flip_to="prefill", worker_role="prefill")]
    relabelled = [*BASE, flex("f1", "prefill", worker_role="prefill")]
    assert next_steps(marked, desired) == (Step("flip", "f1", "prefill"),)
    assert next_steps(switched, desired) == (Step("flip", "f1", "prefill"),)  # SetRole again
    assert next_steps(relabelled, desired) == ()
    assert converged(relabelled, desired, Counts(1, 1), 1)


def test_converged() -> None:
    pods = [*BASE, flex("f1", "decode")]
    assert converged(pods, Counts(1, 2), Counts(1, 1), 1)
    assert not converged(pods, Counts(1, 2), Counts(1, 1), 2)  # a pod not created yet
    assert not converged([*BASE, flex("f1", "pending")], Counts(1, 2), Counts(1, 1), 1)
    assert not converged([*BASE, flex("f1", "decode", scale_down="drain")], Counts(1, 1),
                         Counts(1, 1), 1)  # fmt: skip
    assert not converged(BASE[:1], Counts(1, 0), Counts(1, 1), 0)  # a fixed pod missing


def test_decision_marks_only_flexible_pods_that_are_free() -> None:
    pods = [*BASE, flex("f1", "decode"), flex("f2", "decode", flip_to="prefill"),
            flex("f3", "prefill")]  # fmt: skip
    got = decision_steps([("f1", "prefill"), ("d0", "prefill"), ("f2", "decode")],
                         ["f3", "p0"], pods)  # fmt: skip
    assert got == (Step("assign", "f1", "prefill"), Step("mark_remove", "f3"))
