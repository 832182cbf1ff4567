"""forward.transfer: Krivanek aberration phase and apertures against abTEM 1.0.11."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from forward.beam import ABERRATION_SYMBOLS, make_aberrations
from forward.errors import InputError
from forward.transfer import aberration_phase, aperture

import abtem  # noqa: E402  (the reference simulator: a dev dependency, never skipped)

ENERGY = 80e3
GPTS = (24, 40)
SAMPLING = 0.1


def _abtem_angular_grid(**kwargs):
    tf = abtem.transfer.Aberrations(energy=ENERGY, gpts=GPTS, sampling=SAMPLING, **kwargs)
    alpha, phi = tf._angular_grid("cpu")
    return tf, np.asarray(alpha), np.asarray(phi)


def _all_coefficients(seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    # Magnitudes chosen so each order contributes ~10-30 rad at 0.2 rad (float32 keeps ~1e-5 rad).
    scale = {1: 10.0, 2: 80.0, 3: 5e2, 4: 3e3, 5: 2e4}
    out = {}
    for sym in ABERRATION_SYMBOLS:
        if sym.startswith("phi"):
            out[sym] = float(rng.uniform(-np.pi, np.pi))
        else:
            out[sym] = float(rng.normal() * scale[int(sym[1])])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_aberration_phase_matches_abtem_all_orders(seed):
    coeffs = _all_coefficients(seed)
    tf, alpha, phi = _abtem_angular_grid(**coeffs)
    ref = np.asarray(tf._evaluate_kernel())
    chi = aberration_phase(alpha, phi, tf.wavelength, make_aberrations(coeffs))
    ours = np.exp(-1j * np.asarray(chi))
    err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert err < 1e-4, err


def test_defocus_is_minus_c10_and_positive_defocus_lowers_chi():
    _, alpha, phi = _abtem_angular_grid()
    chi_pos = aberration_phase(alpha, phi, 0.04, make_aberrations(defocus=100.0))
    chi_c10 = aberration_phase(alpha, phi, 0.04, make_aberrations({"C10": -100.0}))
    np.testing.assert_array_equal(np.asarray(chi_pos), np.asarray(chi_c10))
    # chi = pi * alpha^2 * C10 / lambda (Krivanek 1999 eq. 1, n = 1, m = 0).
    expected = np.pi * alpha.astype(np.float64) ** 2 * (-100.0) / 0.04
    np.testing.assert_allclose(np.asarray(chi_pos), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("soft", [False, True])
def test_aperture_matches_abtem(soft):
    ap = abtem.transfer.Aperture(25.0, soft=soft, energy=ENERGY, gpts=GPTS, sampling=SAMPLING)
    ref = np.asarray(ap._evaluate_kernel())
    alpha, phi = (np.asarray(x) for x in ap._angular_grid("cpu"))
    ours = aperture(alpha, 25.0, soft=soft, phi=phi, angular_sampling=ap.angular_sampling)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-6)
    assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0


def test_soft_aperture_needs_phi_and_sampling():
    alpha = np.zeros((4, 4), np.float32)
    with pytest.raises(InputError, match="soft aperture needs phi .* and angular_sampling"):
        aperture(alpha, 20.0, soft=True)
    with pytest.raises(InputError, match=r"angular_sampling must be a pair \(dax, day\)"):
        aperture(alpha, 20.0, soft=True, phi=alpha, angular_sampling=(1.0, 2.0, 3.0))


def test_aberration_phase_jit_vmap_grad():
    _, alpha, phi = _abtem_angular_grid()
    ab = make_aberrations({"C10": -30.0, "C30": 2e4, "C12": 10.0, "phi12": 0.4})
    f = lambda a: aberration_phase(alpha, phi, 0.0418, a)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(f)(ab)), np.asarray(f(ab)), rtol=1e-5, atol=1e-4)
    batch = jax.tree.map(lambda *x: jnp.stack(x), ab, make_aberrations({"C10": 20.0}))
    out = jax.vmap(f)(batch)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(f(make_aberrations({"C10": 20.0}))))

    inside = alpha < 0.03  # a realistic aperture: chi stays within a few rad

    def loss(c10, c30_um):
        a = type(ab)(**{**ab.__dict__, "C10": c10, "C30": c30_um * 1e4})
        return jnp.sum(jnp.where(inside, jnp.cos(f(a)), 0.0))

    check_grads(loss, (jnp.float32(-30.0), jnp.float32(2.0)), order=1, modes=["rev"], eps=0.05, rtol=1e-2)


def test_soft_aperture_gradient_in_cutoff():
    _, alpha, phi = _abtem_angular_grid()
    sampling = (13.0, 7.8)
    g = jax.grad(lambda c: aperture(alpha, c, soft=True, phi=phi, angular_sampling=sampling).sum())(20.0)
    # d(area)/d(cutoff) of a disc in pixel units: 2 pi r / (dax day) > 0.
    expected = 2 * np.pi * 20.0 / (sampling[0] * sampling[1])
    assert 0.5 * expected < float(g) < 1.5 * expected
