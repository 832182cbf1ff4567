"""The sites of a field of view split over Ray actors (workflows.site_shards) give the in-process
result: the abTEM MoS2 field of view (tests/data/fov_mos2_haadf.npz, abTEM's hypothesis images),
two frames (the second drifted: new sites), scored with and without two shard actors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forward import InputError
from hypotest.beamfile import parse_beam
from hypotest.fieldofview import FieldOfViewScorer
from hypotest.hypothesis import load_hypotheses
from hypotest.live.fovsim import FOV_BEAM, FieldOfViewSimSource
from hypotest.scoring import ScoringInput
from workflows.local import local_ray
from workflows.site_shards import SiteShards

pytestmark = pytest.mark.ray

DATA = Path(__file__).parents[1] / "data" / "fov_mos2_haadf.npz"


def test_sites_split_over_actors_give_the_in_process_result():
    images = np.load(DATA)["hyp_images"][:8].astype(np.float64)
    hyps = ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))
    beam = {**FOV_BEAM, "dose": 2e4}
    src = FieldOfViewSimSource(seed=2, dose=2e4)
    rng = np.random.default_rng(3)
    exposure = 2e4 * abs(np.linalg.det(src.m))
    # the second frame 4 px along x: it brings sites into view, which are scored in-process
    frames = [rng.poisson(exposure * np.maximum(src.expected((4.0 * i, 0.0)), 0)).astype(float) for i in range(2)]
    bf = parse_beam(beam)
    local = FieldOfViewScorer(hyps, frames[0], bf, images=images, grow_sites=True)
    assert local.add(frames[1]).new_sites > 0
    want = local.result()
    with local_ray(num_cpus=2), SiteShards(2) as split:
        sharded = FieldOfViewScorer(hyps, frames[0], bf, images=images, split=split, grow_sites=True)
        sharded.add(frames[1])
        got = sharded.result()
        assert len(split.pids) == 2  # two processes did the work
        assert all(min(v) > 10 for v in split.sizes.values())  # every class split into two real blocks
        with pytest.raises(InputError, match="already serve a field of view"):
            split.setup(sharded)
    assert len(got["sites"]) == len(want["sites"]) > 40
    for a, b in zip(got["sites"], want["sites"]):
        assert a["best"] == b["best"] and a["decided"] == b["decided"] and a["status"] == b["status"]
        for h, p in a["posterior"].items():
            assert abs(p - b["posterior"][h]) < 1e-6
        assert abs(a["fit"]["z"] - b["fit"]["z"]) < 1e-6


def test_site_shards_need_ray():
    with pytest.raises(InputError, match="needs Ray"):
        SiteShards(2)
