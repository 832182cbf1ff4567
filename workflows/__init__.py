"""workflows: Ray. Library shards in the object store, distributed pre-simulation, scoring and
refinement, and the ``ray job submit`` entrypoints."""

from workflows.local import LOOPBACK, LocalRay, local_ray, worker_env

__all__ = ["LOOPBACK", "LocalRay", "local_ray", "worker_env"]
