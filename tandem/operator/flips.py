"""The flip and scale-down state machine of an autoscaled pool (pure).

Every step in flight is written on the pod itself, so a restarted operator
finds it and finishes it; nothing lives only in memory:

- `tandem.dev/flip-to: <role>`: the pod is moving to that role (a flip, or a
  new flexible pod's first role). Carried out, once the pod is Ready, as
  Drain (the worker admits nothing new; in-flight streams finish), `SetRole`
  (no model reload), then the role label is set and the annotation removed in
  one patch. Every call is idempotent, so redoing the whole sequence after a
  restart at any point ends in the same place: one pod, in its new role.
- `tandem.dev/scale-down: drain`: the pod is being removed. Drain first; once
  drained (and no other flexible pod is starting, which the ReplicaSet would
  prefer to delete), the operator sets `drained` and the lowest
  `controller.kubernetes.io/pod-deletion-cost` in one patch; the flexible
  Deployment's replicas then drop by one (see `tandem.operator.layout`) and the
  operator deletes that pod itself as well.

`next_steps(pods, desired)` looks at the pods (labels, annotations, readiness
and, where scraped, the role each worker reports) and the desired counts per
role, and returns what to do now. Besides carrying out what is in flight, it
repairs: it gives pending pods the role that is short, flips or removes
flexible pods when the counts disagree with the desired ones (an operator that
died between writing its decision and marking the pods), and flips a worker
back to its label when it reports another role (its container restarted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tandem.operator.layout import PENDING, WORKER_ROLES, Counts

StepKind = Literal["assign", "flip", "mark_remove", "drain", "delete"]


@dataclass(frozen=True)
class PodView:
    """What the state machine needs of one worker pod of the pool."""

    name: str
    role: str  # its tandem.dev/role label: prefill | decode | pending
    flexible: bool
    ready: bool = True
    deleting: bool = False
    flip_to: str | None = None
    scale_down: str | None = None  # drain | drained
    worker_role: str | None = None  # the role its worker reports (None: not known)
    load: float = 0.0  # running + waiting requests; the least loaded moves first

    @property
    def busy_with_step(self) -> bool:
        return self.flip_to is not None or self.scale_down is not None

    @property
    def intended(self) -> str | None:
        """The role this pod will serve once what is in flight is done (None: leaving)."""
        if self.deleting or self.scale_down is not None:
            return None
        if self.flip_to is not None:
            return self.flip_to
        return self.role if self.role in WORKER_ROLES else None


@dataclass(frozen=True)
class Step:
    kind: StepKind
    pod: str
    role: str = ""  # assign, flip: the role it goes to
    release: bool = False  # drain: once drained, the pod may be marked for deletion


def next_steps(pods: Sequence[PodView], desired: Counts) -> tuple[Step, ...]:
    live = [p for p in pods if not p.deleting]
    steps = [s for p in live if (s := _in_flight(p, live)) is not None]
    steps += _repairs(live, desired)
    return tuple(steps)


def converged(pods: Sequence[PodView], desired: Counts, fixed: Counts, flexible: int) -> bool:
    """Nothing in flight, every pod where the layout wants it: a new decision may start."""
    live = [p for p in pods if not p.deleting]
    if next_steps(live, desired) or any(p.busy_with_step or p.role == PENDING for p in live):
        return False
    fixed_now = Counts(
        *(sum(1 for p in live if not p.flexible and p.role == r) for r in WORKER_ROLES)
    )
    return fixed_now == fixed and sum(1 for p in live if p.flexible) == flexible


def _in_flight(pod: PodView, live: Sequence[PodView]) -> Step | None:
    if pod.scale_down == "drained":
        return Step("delete", pod.name)
    if pod.scale_down == "drain":
        others_ready = all(p.ready for p in live if p.flexible and p.name != pod.name)
        return Step("drain", pod.name, release=others_ready)
    if pod.flip_to is not None and pod.ready:
        return Step("flip", pod.name, pod.flip_to)
    return None


def _least_loaded(pods: Sequence[PodView]) -> list[PodView]:
    return sorted(pods, key=lambda p: (not p.ready, p.load, p.name))


def _repairs(live: Sequence[PodView], desired: Counts) -> list[Step]:
    deficit = {r: desired.of(r) - sum(1 for p in live if p.intended == r) for r in WORKER_ROLES}
    steps: list[Step] = []
    idle = [p for p in live if p.flexible and not p.busy_with_step]
    # A worker that reports another role than its label (its container restarted in the
    # start role): the label is what the pool decided, so the worker goes back to it.
    for p in idle:
        if p.role in WORKER_ROLES and p.worker_role is not None and p.worker_role != p.role:
            steps.append(Step("assign", p.name, p.role))
    pending = sorted((p for p in idle if p.role == PENDING), key=lambda p: p.name)
    for p in pending:
        short = max(WORKER_ROLES, key=lambda r: deficit[r])
        if deficit[short] > 0:
            steps.append(Step("assign", p.name, short))
            deficit[short] -= 1
        else:
            steps.append(Step("mark_remove", p.name))  # surplus: it never served, remove it
    settled = [
        p for p in idle if p.role in WORKER_ROLES and not any(s.pod == p.name for s in steps)
    ]
    for src, dst in (("prefill", "decode"), ("decode", "prefill")):
        donors = _least_loaded([p for p in settled if p.role == src])
        while deficit[src] < 0 < deficit[dst] and donors:
            steps.append(Step("assign", donors.pop(0).name, dst))
            deficit[src] += 1
            deficit[dst] -= 1
        settled = [p for p in settled if not any(s.pod == p.name for s in steps)]
    for r in WORKER_ROLES:
        donors = _least_loaded([p for p in settled if p.role == r])
        while deficit[r] < 0 and donors:
            steps.append(Step("mark_remove", donors.pop(0).name))
            deficit[r] += 1
    return steps


def decision_steps(
    flips: Sequence[tuple[str, str]], remove: Sequence[str], pods: Sequence[PodView]
) -> tuple[Step, ...]:
    """The planner's picks as marks on the pods: (pod, to_role) flips and removals. Only
    flexible pods move; a fixed one the planner named is left to the repair rules."""
    movable = {p.name for p in pods if p.flexible and not p.busy_with_step and not p.deleting}
    steps = [Step("assign", name, role) for name, role in flips if name in movable]
    steps += [Step("mark_remove", name) for name in remove if name in movable]
    return tuple(steps)
