"""A real local head (`ray start --head` on 127.0.0.1, token auth), `ray job submit` of the
pre-simulation entrypoint, results read back from the cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.workflows._head import RAY, ray_head
from tests.workflows._small import small_pairs, small_spec
from workflows.cache import read_images
from workflows.local import worker_env
from workflows.spec import make_spec_simulator, spec_digest
from workflows.specimens import save_pairs

pytestmark = pytest.mark.ray


def test_job_submit_presimulate_with_token(tmp_path):
    pairs = small_pairs(4, seed=3)
    hyp = save_pairs(tmp_path / "pairs.npz", pairs)
    cache = tmp_path / "cache"
    report = tmp_path / "report.json"
    entry = [
        sys.executable, "-m", "workflows.presimulate", str(hyp), str(cache),
        "--defocus", "0", "50", "--gpts", "32", "--slice-thickness", "2", "--semiangle", "20",
        "--dose", "1e4", "--batch-size", "2", "--no-progress", "--report", str(report),
    ]  # fmt: skip
    runtime_env = json.dumps({"env_vars": worker_env(1)})
    with ray_head(num_cpus=2) as head:
        # Without the cluster's token the job API refuses the client.
        bad = dict(head.env, RAY_AUTH_TOKEN="0" * 64)
        refused = subprocess.run(
            [RAY, "job", "list", "--address", head.dashboard], env=bad, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0
        assert "403" in refused.stdout + refused.stderr or "uthenticat" in refused.stdout + refused.stderr
        done = subprocess.run(
            [RAY, "job", "submit", "--address", head.dashboard, "--runtime-env-json", runtime_env, "--", *entry],
            env=head.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout.lower(), done.stdout[-3000:]
    summary = json.loads(report.read_text())
    (group,) = summary["groups"]
    assert summary["ray"]["started"] is False  # the job connected to the head, it did not start its own Ray
    assert group["n_items"] == 8 and group["n_computed"] == 8
    specs = [small_spec(0.0), small_spec(50.0)]
    assert group["digests"] == [spec_digest(s) for s in specs]
    ids = [p[0] for p in pairs]
    imgs = read_images(cache, specs[1], ids)
    want = make_spec_simulator(specs[1])(pairs[2][1])
    np.testing.assert_allclose(imgs[2], want, rtol=1e-5, atol=1e-8)
    assert not np.allclose(read_images(cache, specs[0], ids[:1])[0], imgs[0])  # defocus matters
