"""forward.probe: STEM probe against abTEM 1.0.11, normalisation, placement, guards, transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from forward.beam import make_beam, make_detector
from forward.errors import InputError
from forward.grid import make_grid
from forward.probe import check_probe, probe_spectrum, probe_waves

import abtem  # noqa: E402  (the reference simulator: a dev dependency, never skipped)

GRID = make_grid(gpts=(48, 64), sampling=0.1)
ABER = {"C10": -40.0, "C30": 3e4, "C12": 15.0, "phi12": 0.5, "C21": 300.0, "phi21": -1.0}


def _beam(**kw):
    det = make_detector("stem_annular", inner=40.0, outer=100.0)
    args = dict(semiangle_cutoff=25.0, aberrations=ABER, detector=det)
    args.update(kw)
    return make_beam(80e3, **args)


@pytest.mark.parametrize("soft", [True, False])
def test_probe_matches_abtem(soft):
    pos = np.array([[1.3, 2.2], [3.05, 0.4]])
    ref = abtem.Probe(
        semiangle_cutoff=25.0, energy=80e3, gpts=GRID.gpts, sampling=0.1, soft=soft, **ABER
    ).build(scan=pos, lazy=False).array
    ours = probe_waves(GRID, probe_spectrum(GRID, _beam(), soft=soft), pos)
    err = np.linalg.norm(np.asarray(ours) - ref) / np.linalg.norm(ref)
    assert err < 1e-4, err


def test_probe_normalised_in_diffraction_space():
    spec = probe_spectrum(GRID, _beam())
    assert float(jnp.sum(jnp.abs(spec) ** 2)) == pytest.approx(1.0, abs=1e-5)
    waves = probe_waves(GRID, spec, jnp.array([[0.7, 1.9], [2.0, 2.0]]))
    norms = jnp.sum(jnp.abs(jnp.fft.fft2(waves)) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(np.asarray(norms), 1.0, atol=1e-5)


def test_probe_shift_by_whole_pixels_is_a_roll():
    spec = probe_spectrum(GRID, _beam())
    a = probe_waves(GRID, spec, jnp.array([1.0, 1.5]))
    b = probe_waves(GRID, spec, jnp.array([1.0 + 3 * 0.1, 1.5 - 5 * 0.1]))
    np.testing.assert_allclose(np.asarray(b), np.roll(np.asarray(a), (3, -5), (0, 1)), atol=2e-6)


def test_probe_jit_vmap_grad_in_position_and_defocus():
    beam = _beam()
    spec_fn = jax.jit(lambda b: probe_spectrum(GRID, b))
    np.testing.assert_allclose(
        np.asarray(spec_fn(beam)), np.asarray(probe_spectrum(GRID, beam)), atol=1e-6
    )
    weights = jnp.asarray(np.random.default_rng(0).random(GRID.gpts), jnp.float32)

    def signal(pos, c10):
        ab = type(beam.aberrations)(**{**beam.aberrations.__dict__, "C10": c10})
        b = type(beam)(**{**beam.__dict__, "aberrations": ab})
        psi = probe_waves(GRID, probe_spectrum(GRID, b), pos)
        return jnp.sum(jnp.abs(psi) ** 2 * weights) * 1e3

    check_grads(signal, (jnp.array([2.1, 3.3]), jnp.float32(-40.0)), order=1, modes=["rev"], eps=1e-2, rtol=2e-2)
    ps = jnp.array([[1.0, 1.0], [2.0, 3.0], [0.5, 4.0]])
    batched = jax.vmap(signal, in_axes=(0, None))(ps, jnp.float32(-40.0))
    looped = [signal(p, jnp.float32(-40.0)) for p in ps]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5)


def test_check_probe_guards():
    with pytest.raises(InputError, match="sampling too coarse for the probe.*use sampling below"):
        check_probe(make_grid(gpts=(64, 64), sampling=0.6), _beam())
    with pytest.raises(InputError, match="grid too small for the probe.*enlarge the cell"):
        check_probe(make_grid(gpts=(8, 8), sampling=0.1), _beam(semiangle_cutoff=10.0))
    check_probe(GRID, _beam())  # a valid probe passes
