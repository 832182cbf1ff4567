"""Windows of a field of view scored per site: each hypothesis's image at a window's pixels
through the frame's affine map (its Fourier series evaluated exactly: the images are band-limited),
and the Laplace evidence over each window's local scale and background (the scorers' one
Newton-Laplace core, :mod:`inference.newton`), vmapped over sites and hypotheses.

:func:`class_evidence` is the whole per-class computation on one frame, a pure function of arrays:
:class:`hypotest.fieldofview.FieldOfViewScorer` calls it in-process, and
:class:`workflows.site_shards.SiteShards` calls it on blocks of sites in Ray actors (the result is
the same: sites are independent given the frame's registration).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["WindowEvidence", "class_evidence", "window_models", "neighbour_contrast", "laplace_windows",
           "dispersion_windows", "grad2", "concat_evidence"]  # fmt: skip


@dataclasses.dataclass
class WindowEvidence:
    """One class's windows on one frame: ``y``, ``w`` ``[K, P]`` (counts and mask of each site's
    window square, ``P = A x A`` pixels), ``models [M, K, P]`` (each member's image there),
    ``log_evidence``, ``scale``, ``background`` ``[M, K]`` (Laplace), ``centre [K, 2]`` (the window
    centres, frame pixels)."""

    y: np.ndarray
    w: np.ndarray
    models: np.ndarray
    log_evidence: np.ndarray
    scale: np.ndarray
    background: np.ndarray
    centre: np.ndarray


def concat_evidence(parts) -> WindowEvidence:
    """Blocks of sites' :class:`WindowEvidence` joined in order."""
    parts = list(parts)
    return WindowEvidence(
        y=np.concatenate([p.y for p in parts]), w=np.concatenate([p.w for p in parts]),
        models=np.concatenate([p.models for p in parts], axis=1),
        log_evidence=np.concatenate([p.log_evidence for p in parts], axis=1),
        scale=np.concatenate([p.scale for p in parts], axis=1),
        background=np.concatenate([p.background for p in parts], axis=1),
        centre=np.concatenate([p.centre for p in parts]),
    )  # fmt: skip


def class_evidence(counts, mask, m, t, r_sites, shifts, series_list, di, disk, radius, exposure, noise, prior,
                   calibration=None, corr_factor: float = 1.0, frame_level=(1.0, 0.0), neighbours=None) -> WindowEvidence:  # fmt: skip
    """The windows of sites ``r_sites [K, 2]`` Å on frame ``counts``/``mask [nx, ny]`` registered
    at ``(m, t)``, scored against ``series_list`` (one :class:`inference.lattice.HostSeries` per
    member, each displaced by ``shifts [M, K, 2]`` Å): the window square ``di x di`` pixels around
    each site's nearest pixel, its pixels within ``radius`` Å of the site, ``disk [P]`` the square's
    pixels the radius can reach. A window the frame does not hold whole gets no pixels. With a
    detector ``calibration`` (:mod:`inference.detector_calibration`) each pixel is weighted by the
    Poisson over the calibrated variance (quasi-likelihood) at the host's expected counts with the
    frame's registered ``frame_level = (scale, background)``, ``corr_factor`` the pixels' correlation.
    ``neighbours``: per site a list of ``(series, shift [2], r_defect [2], taper (d1, d2))``, the
    defects of neighbouring sites whose contrast is added to every member's image in this site's
    window (:func:`neighbour_contrast`): the sites are scored jointly with their detected
    neighbours."""
    shape = counts.shape
    wpx = int(-di[0])
    n = len(r_sites)
    p = (r_sites - t) @ np.linalg.inv(m).T
    centre = np.round(p)
    ok = np.all((centre - wpx >= 0) & (centre + wpx <= np.asarray(shape) - 1), axis=1)
    ci = centre.astype(int)
    ai = np.clip(ci[:, 0:1, None] + di.astype(int)[None, :, None], 0, shape[0] - 1)
    bj = np.clip(ci[:, 1:2, None] + di.astype(int)[None, None, :], 0, shape[1] - 1)
    y = counts[ai, bj]
    mk = mask[ai, bj]
    rel = np.stack(np.meshgrid(di, di, indexing="ij"), -1).reshape(-1, 2)
    dist = np.linalg.norm(((centre[:, None, :] + rel[None]) @ m.T + t) - r_sites[:, None, :], axis=-1)
    inwin = (dist <= radius).reshape(n, len(di), len(di))
    w = (mk & inwin & ok[:, None, None]).reshape(n, -1)
    y = np.where(w, y.reshape(n, -1), 0.0)
    models = window_models(series_list, shifts, m, t, centre, di, di).reshape(len(series_list), n, -1)
    if neighbours is not None:
        # one evaluation per neighbouring hypothesis image, over every window that holds one
        groups: dict = {}
        for k, terms in enumerate(neighbours):
            for s_nb, shift, r_nb, taper in terms:
                groups.setdefault(id(s_nb), (s_nb, taper, []))[2].append((k, shift, r_nb))
        for s_nb, taper, rows in groups.values():
            ks = np.array([k for k, _, _ in rows])
            add = neighbour_contrast(series_list[0], s_nb, np.stack([sh for _, sh, _ in rows]),
                                     np.stack([r for _, _, r in rows]), taper, m, t, centre[ks], di)  # fmt: skip
            np.add.at(models, (slice(None), ks), add[None].astype(models.dtype))
    wq = w.astype(np.float64)
    if calibration is not None:  # quasi-likelihood: each pixel weighted by Poisson / model variance
        wq = w / (dispersion_windows(calibration, models[0], exposure, *frame_level, len(di)) * corr_factor)
    # only the pixels a window's disk can hold go to the Laplace step (~pi/4 of the square)
    ev = laplace_windows(y[:, disk], wq[:, disk], models[:, :, disk], exposure, noise, prior)
    return WindowEvidence(y=y, w=w, models=models, log_evidence=np.asarray(ev.log_evidence),
                          scale=np.asarray(ev.scale), background=np.asarray(ev.background), centre=centre)  # fmt: skip


def neighbour_contrast(host, series, shift, r_defect, taper, m, t, centre, di):
    """``[N, A * A]``: neighbouring sites' defect contrast, ``I_h(r - shift_n) - I_host(r)``, in the
    window squares around ``centre [N, 2]`` (frame pixels), each tapered to zero with the distance
    from its defect ``r_defect [N, 2]`` [Å] (1 within ``taper[0]``, a raised cosine to 0 at
    ``taper[1]`` Å): the supercell image holds the defect's periodic copies too, which must not
    reach the window. ``shift [N, 2]`` Å."""
    centre = np.asarray(centre, float)
    shift = np.asarray(shift, float)
    both = window_models([series, host], np.stack([shift, np.zeros_like(shift)]), m, t, centre, di, di)
    rel = np.stack(np.meshgrid(di, di, indexing="ij"), -1).reshape(-1, 2)
    d = np.linalg.norm((centre[:, None, :] + rel[None]) @ m.T + t - np.asarray(r_defect, float)[:, None, :], axis=-1)
    d1, d2 = taper
    wgt = np.where(d <= d1, 1.0, np.where(d >= d2, 0.0, 0.5 * (1 + np.cos(np.pi * (d - d1) / max(d2 - d1, 1e-9)))))
    return (both[0] - both[1]).reshape(len(centre), -1) * wgt


def window_models(series_list, shifts, m, t, centres, di, dj):
    """``[H, K, A, B]`` model windows: hypothesis ``h``'s image at ``M (centre_k + (di, dj)) + t - shift_hk``."""
    out = []
    for h, s in enumerate(series_list):
        q = s.g @ m  # [G, 2]
        base = centres @ m.T + t[None, :] - shifts[h]  # [K, 2] Å
        ph = np.exp(2j * np.pi * (base @ s.g.T)).astype(np.complex64) * s.c.astype(np.complex64)[None, :]
        u = np.exp(2j * np.pi * di[:, None] * q[None, :, 0]).astype(np.complex64)
        v = np.exp(2j * np.pi * dj[:, None] * q[None, :, 1]).astype(np.complex64)
        out.append(np.real(np.einsum("kg,ag,bg->kab", ph, u, v, optimize=True)))
    return np.stack(out)


def laplace_one_window(y, w, img, sat, exposure, noise, prior):
    """Laplace evidence over (scale, background) of one masked window (:mod:`inference.newton`)."""
    import jax.numpy as jnp

    from inference.evidence import _mu_derivs
    from inference.newton import newton_laplace, total_count_start

    def lik(theta):
        a, ww, data = _mu_derivs(noise, y, exposure * (theta[0] * img + theta[1]))
        ea, ew = exposure * a * w, exposure * exposure * ww * w
        h = (-jnp.sum(ew * img * img), -jnp.sum(ew * img), -jnp.sum(ew))
        return jnp.stack([jnp.sum(ea * img), jnp.sum(ea)]), h, jnp.sum(data * w)

    total = jnp.sum(y * w) / noise.gain
    theta0 = total_count_start(total, jnp.sum(img * w), jnp.sum(w), exposure, prior)
    return newton_laplace(lik, theta0, prior, sat, 6)


_WINDOWS_JIT = None


def laplace_windows(counts, mask, models, exposure, noise, prior):
    """Laplace evidence ``[H, K]`` of ``counts [K, P]`` (``mask [K, P]``) under ``models [H, K, P]``,
    vmapped over sites and hypotheses; compiled once per shape (module-level jit)."""
    global _WINDOWS_JIT
    import jax
    import jax.numpy as jnp

    from inference.noise import _saturated_part

    if _WINDOWS_JIT is None:
        per_site = jax.vmap(laplace_one_window, in_axes=(0, 0, 0, 0, None, None, None))
        _WINDOWS_JIT = jax.jit(jax.vmap(per_site, in_axes=(None, None, 0, None, None, None, None)))
    y = jnp.asarray(counts, jnp.float32)
    w = jnp.asarray(mask, jnp.float32)
    sat = jnp.sum(_saturated_part(noise, y) * w, axis=-1)
    return _WINDOWS_JIT(y, w, jnp.asarray(models, jnp.float32), sat, jnp.asarray(exposure, jnp.float32), noise, prior)


def grad2(win2d):
    """Squared gradient [(units/pixel)²] of windows ``[..., A, B]`` (central differences)."""
    gx, gy = np.gradient(win2d, axis=(-2, -1))
    return gx * gx + gy * gy


def dispersion_windows(cal, host_models, exposure, scale, background, n):
    """``[K, P]`` per-pixel dispersion ``var / mu`` of the calibrated noise model at the host's windows."""
    mu = np.maximum(exposure * (scale * host_models + background), 1e-6)
    g = grad2(mu.reshape(mu.shape[0], n, n)).reshape(mu.shape)
    return cal.pixel_variance(mu, g) / mu
