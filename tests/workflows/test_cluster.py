"""The loopback Ray head launcher (workflows.cluster); starting a real head is in test_job_submit."""

import pytest

from forward import InputError
from workflows import start_local_cluster


def test_start_local_cluster_bad_input():
    with pytest.raises(InputError, match=r"num_cpus must be >= 1 .*got 0"):
        start_local_cluster(0)
