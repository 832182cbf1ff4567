"""What the abTEM field-of-view tests share: the exact evaluation of abTEM's periodic images, a
site's window of a frame, the ideal observer's decision, and the registration and isolation checks
against the generators' true map."""

from __future__ import annotations

import math

import numpy as np


def fourier_interp(image, cell, points):
    """The periodic band-limited ``image`` (a grid over ``cell`` from 0) at ``points [n, 2]`` Å."""
    gx, gy = image.shape
    f = np.fft.fft2(image) / image.size
    kx, ky = np.fft.fftfreq(gx, d=cell[0] / gx), np.fft.fftfreq(gy, d=cell[1] / gy)
    ex = np.exp(2j * np.pi * points[:, 0:1] * kx[None, :])
    ey = np.exp(2j * np.pi * points[:, 1:2] * ky[None, :])
    return np.real(np.einsum("nx,xy,ny->n", ex, f, ey, optimize=True))


def window(y, m, t, r, centre, radius, pixel):
    """``(points [n, 2] Å, counts [n])``: the pixels of frame ``y`` (mapped ``M p + t``) around
    pixel ``centre`` that lie within ``radius`` Å of ``r``."""
    w = int(math.ceil(radius / pixel)) + 1
    c = np.asarray(centre, int)
    ii, jj = np.meshgrid(np.arange(c[0] - w, c[0] + w + 1), np.arange(c[1] - w, c[1] + w + 1), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel()], 1) @ m.T + t
    inside = np.linalg.norm(pts - r, axis=1) <= radius
    return pts[inside], y[ii.ravel()[inside], jj.ravel()[inside]]


def decide(counts, mus, members, defect_prior):
    """The member with the largest Poisson log likelihood of ``counts`` under ``mus`` (one expected
    count array per member, the host first) plus the log prior: the host ``1 - defect_prior``, the
    rest sharing ``defect_prior``."""
    ll = [float(np.sum(counts * np.log(mu) - mu)) for mu in mus]
    lp = np.log([1 - defect_prior] + [defect_prior / (len(members) - 1)] * (len(members) - 1))
    return members[int(np.argmax(np.asarray(ll) + lp))]


def assert_registered(res, m):
    """The registered pixel sizes within 0.2 % of the true map ``m``'s, the rotation within 0.1°
    (up to the host lattice's symmetries)."""
    import pytest

    from inference.lattice import lattice_point_group

    cal = res["lattice"]["calibration"]
    assert cal["pixel_x_A"] == pytest.approx(np.linalg.norm(m[:, 0]), rel=2e-3)
    assert cal["pixel_y_A"] == pytest.approx(np.linalg.norm(m[:, 1]), rel=2e-3)
    q = np.asarray(res["lattice"]["affine_A_per_px"]) @ np.linalg.inv(m)
    lat = np.asarray(res["lattice"]["primitive_vectors_A"]).T
    resid = min(abs(math.degrees(math.atan2(*(r.T @ q)[::-1, 0]))) for r in lattice_point_group(lat))
    assert resid < 0.1


def isolated_sites(px, disturbances, reach, step, own):
    """Indices of the sites at ``px`` [pixels] with no disturbance (a defect, a hole) within
    ``reach`` Å but their own (within ``own`` pixels)."""
    return [k for k in range(len(px))
            if all(np.linalg.norm(px[k] - q) * step > reach or np.linalg.norm(px[k] - q) < own for q in disturbances)]  # fmt: skip
