"""Shared fixtures of the product tests: the exit waves of a built-in library (computed once per
test process; every MoS2 live-session test reuses them)."""

import numpy as np
import pytest


def builtin_exit_waves(library):
    """The HRTEM exit waves of every hypothesis of built-in ``library`` at its imaging settings."""
    from forward import make_beam
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.builtin import LIBRARY_SETTINGS
    from hypotest.live.model import ImageModel

    st = LIBRARY_SETTINGS[library]
    hyps = load_hypotheses(library)
    model = ImageModel([h.specimen for h in hyps], sampling=st.sampling, binning=st.binning,
                       slice_thickness=st.slice_thickness)  # fmt: skip
    beam = make_beam(st.energy)
    return [np.asarray(model.sim.exit_wave(h.specimen, beam)) for h in hyps]


@pytest.fixture(scope="session")
def mos2_waves():
    return builtin_exit_waves("mos2_defects")
