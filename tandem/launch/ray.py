"""Launch workers as Ray actors: a local Ray instance, or an existing cluster.

Each actor starts the same `tandem worker` process as the local launcher, on
the node Ray placed it (`num_gpus=1` on GPU, so Ray sets CUDA_VISIBLE_DEVICES),
listening on all interfaces; the actor reports `node-ip:port`. The worker
process dies with its actor (tandem.launch.child). The model folder must exist
at the same path on every node (shared storage or a baked image).
"""

from __future__ import annotations

import logging
from typing import Any

from tandem.launch.local import LocalProcess
from tandem.launch.spec import WorkerSpec, free_ports

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
PLACEMENT_TIMEOUT_S = 300.0


class _WorkerActorImpl:
    """Runs inside the Ray actor process."""

    def __init__(self, spec: WorkerSpec) -> None:
        import ray

        self.node_ip = ray.util.get_node_ip_address()
        self.port, metrics_port = free_ports(2, "0.0.0.0")
        # Ray chose this actor's GPU (CUDA_VISIBLE_DEVICES); keep it.
        self.proc = LocalProcess(spec.name, spec.argv("0.0.0.0", self.port, metrics_port))

    def address(self) -> str:
        return f"{self.node_ip}:{self.port}"

    def start(self) -> None:
        self.proc.start()

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()


class RayWorker:
    """Supervised handle of one worker actor."""

    def __init__(self, spec: WorkerSpec, actor_cls: Any) -> None:
        import ray

        self.name = spec.name
        options = {"num_gpus": 1, "num_cpus": 1} if spec.device == "cuda" else {"num_cpus": 0}
        self._actor = actor_cls.options(**options).remote(spec)
        self.address: str = ray.get(self._actor.address.remote(), timeout=PLACEMENT_TIMEOUT_S)
        self._dead = False

    def start(self) -> None:
        import ray

        ray.get(self._actor.start.remote(), timeout=CALL_TIMEOUT_S)

    def poll(self) -> int | None:
        import ray

        if self._dead:
            return -1
        try:
            code: int | None = ray.get(self._actor.poll.remote(), timeout=CALL_TIMEOUT_S)
            return code
        except ray.exceptions.RayActorError:
            log.error("Ray actor of %s died (node lost?)", self.name)
            self._dead = True
            return -1

    def terminate(self) -> None:
        if not self._dead:
            self._actor.terminate.remote()

    def kill(self) -> None:
        import ray

        ray.kill(self._actor)  # the actor's death takes its worker process along
        self._dead = True


class RayLauncher:
    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        import ray

        # address None starts a private local instance; otherwise join the cluster.
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        self._actor_cls = ray.remote(max_restarts=0)(_WorkerActorImpl)

    def worker(self, spec: WorkerSpec) -> RayWorker:
        return RayWorker(spec, self._actor_cls)

    def close(self) -> None:
        import ray

        ray.shutdown()
