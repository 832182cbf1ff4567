"""One step's evidence for every active hypothesis, shared by the live loop and the replay.

Two scorers (``scorer=`` of :class:`hypotest.live.session.LiveSession`):

- ``"laplace"`` (default): sub-pixel shift, scale and background marginalised per hypothesis by
  the Laplace approximation (:func:`inference.evidence.make_laplace_scorer`); the drift found by
  registration is recorded only. One FFT pair per hypothesis and Newton step: right for tens of
  hypotheses.
- ``"fast"``: the frame is registered once against the current best hypothesis (the drift is
  then known), and :func:`inference.screen.make_fast_scorer` screens every hypothesis on binned
  data and scores the ones within a stated margin of the best exactly (scale and background
  marginalised), with a bound on the probability of screening out the truth: for hundreds to
  thousands of hypotheses. Frames with detector channels (4D-STEM) skip the screen: every
  hypothesis is scored exactly at the registered drift (:func:`inference.make_linear_scorer`).

Registration: the MAP shift. For Poisson counts ``y`` and a periodic model image ``I`` the
log-likelihood of a shift ``s`` (scale and background held) is ``sum_x y(x) log I(x - s)`` up to
a constant (``sum_x I(x - s)`` does not depend on ``s``): the cross-correlation of the frame with
``log I``, computed for every integer shift by one FFT pair. The Gaussian prior of the nuisance
prior (``shift_sd`` pixels per axis, mean 0; the one the Laplace scorer marginalises with) is
added, the maximum taken over ``|s| <= max_drift_px``, and refined to sub-pixel by a parabola
through the peak and its neighbours. On a bright frame the prior is negligible; on a sparse one
(tens of counts in an ADF frame) the likelihood is flat and the MAP stays near zero instead of
following the noise. ``log I`` is floored at 1% of the mean image (a dark-count level). A frame
with detector channels (4D-STEM, ``[..., nx, ny]`` channels first) is one Poisson likelihood over
all of them: the channels' correlations are summed.

Units of the background: both scorers take the nuisance prior relative to the signal of the
beam condition (:func:`inference.signal_relative_prior`): 0.1 of the beam in HRTEM, 0.1 of the
mean detected fraction in annular STEM.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["register_shift", "StepEvidence", "make_step_scorer", "SCORER_KINDS"]

SCORER_KINDS = ("laplace", "fast")


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


@dataclasses.dataclass(frozen=True)
class StepEvidence:
    """Per active hypothesis ``[H]``: log evidence [nats], MAP nuisance and Laplace sds."""

    log_evidence: np.ndarray
    scale: np.ndarray
    scale_sd: np.ndarray
    background: np.ndarray
    background_sd: np.ndarray
    shift: np.ndarray  # [H, 2] pixels
    shift_sd: np.ndarray  # [H, 2] pixels (0 where the shift was registered, not marginalised)
    exact: np.ndarray  # [H] bool: scored exactly (all True for "laplace")
    screen_error_bound: float  # P(truth screened out) bound of this step (0 for "laplace")


def _bin_factor(shape) -> int:
    return next(f for f in (4, 2, 1) if all(n % f == 0 for n in shape))


def make_step_scorer(kind: str, noise, prior, frame_shape):
    """``score(counts, images [H, ..., mx, my], exposure, drift, cache_key=None) -> StepEvidence``.

    ``cache_key`` (hashable) identifies ``images`` so the fast scorer's binned cache is built
    once per beam condition and active set.
    """
    from forward import InputError
    from inference.evidence import signal_relative_prior

    if kind not in SCORER_KINDS:
        raise InputError(f"unknown scorer {kind!r}: expected one of {SCORER_KINDS}")
    if kind == "laplace":
        from inference.evidence import make_laplace_scorer

        def score(counts, images, exposure, drift, cache_key=None) -> StepEvidence:
            ev = make_laplace_scorer(noise, signal_relative_prior(prior, images))(counts, images, exposure)
            n = int(np.asarray(ev.log_evidence).shape[0])
            return StepEvidence(
                np.asarray(ev.log_evidence, np.float64), np.asarray(ev.scale), np.asarray(ev.scale_sd),
                np.asarray(ev.background), np.asarray(ev.background_sd), np.asarray(ev.shift),
                np.asarray(ev.shift_sd), np.ones(n, bool), 0.0,
            )  # fmt: skip

        return score

    from inference.screen import make_fast_scorer, prepare_screen_cache

    f = _bin_factor(frame_shape)
    caches: dict = {}

    from inference.evidence import make_linear_scorer

    def score(counts, images, exposure, drift, cache_key=None) -> StepEvidence:
        if np.ndim(images) > 3:  # detector channels (4D-STEM): no screen, every hypothesis exact
            ev = make_linear_scorer(noise, signal_relative_prior(prior, images))(counts, images, exposure, drift)
            n = int(np.asarray(ev.log_evidence).shape[0])
            return StepEvidence(
                np.asarray(ev.log_evidence, np.float64), np.asarray(ev.scale), np.asarray(ev.scale_sd),
                np.asarray(ev.background), np.asarray(ev.background_sd), np.asarray(ev.shift),
                np.zeros((n, 2), np.float32), np.ones(n, bool), 0.0,
            )  # fmt: skip
        hit = caches.get(cache_key) if cache_key is not None else None
        if hit is None:
            hit = (prepare_screen_cache(images, bin_factor=f),
                   make_fast_scorer(noise, signal_relative_prior(prior, images), bin_factor=f))  # fmt: skip
            if cache_key is not None:
                if len(caches) >= 8:
                    caches.pop(next(iter(caches)))
                caches[cache_key] = hit
        cache, fast = hit
        fs = fast(counts, cache, exposure, shift=np.asarray(drift, np.float32))
        n = int(np.asarray(fs.log_evidence).shape[0])
        sh = np.broadcast_to(np.asarray(fs.shift, np.float32)[None, :], (n, 2))
        return StepEvidence(
            np.asarray(fs.log_evidence, np.float64), np.asarray(fs.scale), np.asarray(fs.scale_sd),
            np.asarray(fs.background), np.asarray(fs.background_sd), sh, np.zeros((n, 2), np.float32),
            np.asarray(fs.exact_mask), float(fs.screen_error_bound),
        )  # fmt: skip

    return score
