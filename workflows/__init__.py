"""workflows: Ray. Library shards in the object store, distributed pre-simulation, scoring and
refinement, and the ``ray job submit`` entrypoints (``python -m workflows.presimulate``,
``python -m workflows.refine``; see the README, "Ray and HPC").

Modules: ``local`` (the embedded Ray instance in this process), ``cluster`` (a loopback Ray head
with the job API, a process of its own), ``spec`` (what a pre-simulation computes), ``cache`` (the
content-addressed image cache), ``presim_pool`` (the actor pool that fills it) and its command line
``presimulate``, ``shards`` (scoring where the images live), ``refine_tasks`` (refinement, one task
per hypothesis) and its command line ``refine``, ``specimens`` (hypotheses as (id, Specimen) pairs).
"""

from workflows.cache import cached_ids, has_image, image_path, read_image, read_images, write_image
from workflows.cluster import LocalCluster, start_local_cluster
from workflows.keys import stable_digest32, task_key
from workflows.local import LOOPBACK, LocalRay, local_ray, worker_env
from workflows.presim_pool import PresimReport, SimulationWorker, make_workers, presimulate
from workflows.refine_tasks import RefineResult, refine_batch, refine_one, top_ids
from workflows.shards import ShardedLibrary, ShardScorer, merge_scores, posterior_from_scores
from workflows.spec import (
    SIMULATOR_KINDS,
    SimulationSpec,
    check_specimen,
    make_simulation_spec,
    make_spec_simulator,
    output_shape,
    spec_digest,
    spec_to_json,
)
from workflows.specimens import check_pairs, load_hypotheses, load_pairs, save_pairs

__all__ = [
    "LOOPBACK",
    "LocalCluster",
    "LocalRay",
    "PresimReport",
    "RefineResult",
    "SIMULATOR_KINDS",
    "ShardScorer",
    "ShardedLibrary",
    "SimulationSpec",
    "SimulationWorker",
    "cached_ids",
    "check_pairs",
    "check_specimen",
    "has_image",
    "image_path",
    "load_hypotheses",
    "load_pairs",
    "local_ray",
    "make_simulation_spec",
    "make_spec_simulator",
    "make_workers",
    "merge_scores",
    "output_shape",
    "posterior_from_scores",
    "presimulate",
    "read_image",
    "read_images",
    "refine_batch",
    "refine_one",
    "save_pairs",
    "spec_digest",
    "spec_to_json",
    "stable_digest32",
    "start_local_cluster",
    "task_key",
    "top_ids",
    "worker_env",
    "write_image",
]
