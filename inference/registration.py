"""Drift registration of a frame against a model image: the MAP shift.

For Poisson counts ``y`` and a periodic model image ``I`` the log-likelihood of a shift ``s``
(scale and background held) is ``sum_x y(x) log I(x - s)`` up to a constant (``sum_x I(x - s)``
does not depend on ``s``): the cross-correlation of the frame with ``log I``, computed for every
integer shift by one FFT pair. The Gaussian prior of the nuisance prior (``shift_sd`` pixels per
axis, mean 0; the one the Laplace scorer marginalises with) is added, the maximum taken over
``|s| <= max_drift_px``, and refined to sub-pixel by a parabola through the peak and its
neighbours. On a bright frame the prior is negligible; on a sparse one (tens of counts in an ADF
frame) the likelihood is flat and the MAP stays near zero instead of following the noise.
``log I`` is floored at 1% of the mean image (a dark-count level). A frame with detector channels
(4D-STEM, ``[..., nx, ny]`` channels first) is one Poisson likelihood over all of them: the
channels' correlations are summed.

The live step registers every frame against the current best hypothesis and scores at that shift
(``linear``/``fast``) or starts the Laplace scorer's Newton there (:mod:`inference.scorer`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["register_shift"]


def register_shift(
    frame: np.ndarray, image: np.ndarray, max_drift_px: float = 3.0, shift_sd: float | None = None
) -> tuple[float, float]:
    """MAP drift [pixels] of ``frame`` against ``image`` (module docstring): ``image(x - s)``
    matches the frame, the convention of :func:`inference.evidence.fourier_shift`.

    ``shift_sd``: the prior standard deviation per axis [pixels] (``None``: a flat prior, the
    maximum-likelihood shift). Only ``|s| <= max_drift_px`` per axis is searched: the frame spans
    the cell with pixel (0, 0) at its origin, so drift is small, and a crystal's correlation has
    equal peaks at every lattice translation, where a defect on another site would fit as well
    (the wrong structure).
    """
    img = np.asarray(image, np.float64)
    y = np.asarray(frame, np.float64)
    if y.shape != img.shape or img.ndim < 2:
        raise ValueError(f"frame {list(y.shape)} and image {list(img.shape)} must have one shape [..., nx, ny]")
    floor = 0.01 * max(float(np.mean(img)), 1e-30)
    if img.ndim > 2:  # detector channels: each floored at 1% of its own mean, correlations summed
        floor = np.maximum(0.01 * img.mean(axis=(-2, -1), keepdims=True), 1e-30)
    log_i = np.log(np.maximum(img, floor))
    spec = np.fft.rfft2(y) * np.conj(np.fft.rfft2(log_i))
    c = np.fft.irfft2(spec.reshape((-1,) + spec.shape[-2:]).sum(axis=0), s=img.shape[-2:])
    nx, ny = c.shape
    r = int(np.ceil(max_drift_px))
    d = np.arange(-r - 1, r + 2)
    # the log posterior on the (2r+3)^2 integer shifts around 0 (one ring more for the parabola)
    post = c[np.ix_(d % nx, d % ny)]
    if shift_sd is not None:
        post = post - (d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * float(shift_sd) ** 2)
    inner = np.full(post.shape, -np.inf)
    inner[1:-1, 1:-1] = post[1:-1, 1:-1]
    i, j = np.unravel_index(int(np.argmax(inner)), inner.shape)
    out = []
    for axis, k in ((0, i), (1, j)):
        lo = post[i - 1, j] if axis == 0 else post[i, j - 1]
        hi = post[i + 1, j] if axis == 0 else post[i, j + 1]
        denom = lo - 2 * post[i, j] + hi
        step = 0.5 * (lo - hi) / denom if denom < 0 else 0.0
        out.append(float(d[k] + np.clip(step, -0.5, 0.5)))
    return (out[0], out[1])
