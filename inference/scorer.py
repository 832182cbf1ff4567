"""The one scorer: a frame against the cached image of every hypothesis, nuisance removed.

Every place that scores frames — :func:`inference.score_frames` (and so ``hypotest score``), the
live step (:mod:`hypotest.live.step`), the Ray shards (:mod:`workflows.shards`) — builds its
scorer here::

    scorer = make_scorer(ScorerConfig(kind="fast", noise=noise))
    images = scorer.prepare(cached)          # [H, ..., nx, ny], once per beam condition
    score = scorer.score(counts, images, exposure, shift)     # -> Score, once per frame

**The model.** ``mu = E (scale I_h(x - shift) + background)`` with ``E`` = dose [e-/Å²] x pixel
area [Å²], counts Poisson, Gaussian or Poisson-Gaussian (:class:`inference.noise.NoiseModel`), and
Gaussian priors on the nuisance (:class:`inference.evidence.NuisancePrior`). The log evidence
``log p(y | h)`` marginalises the nuisance by Laplace's method (:mod:`inference.evidence`).

**The scorers** (:data:`SCORERS`):

- ``"laplace"``: shift, scale and background marginalised (4-parameter Laplace, autodiff
  Hessian, one FFT pair per hypothesis and Newton iteration); ``shift`` is the Newton start, and
  without one the frame is registered against each hypothesis's image first (the MAP integer
  shift within 3 pixels refined by a parabola, :func:`inference.register_shift`): the damped
  Newton moves half a pixel per iteration and diverged (NaN or -inf evidence) from zero on
  bright frames drifted by ~2.5 pixels.
- ``"linear"``: the frame registered up to the known ``shift``; scale and background
  marginalised by the 2x2 Newton-Laplace step (:mod:`inference.newton`).
- ``"fast"``: as ``"linear"`` for large libraries: a binned screen whose per-frame margin bounds
  the chance of screening out the truth by ``alpha``, then the survivors scored exactly
  (:mod:`inference.screen`; on the CPU a fused numba kernel, :mod:`inference.screen_cpu`,
  elsewhere jitted XLA, :mod:`inference.screen_jax`). Frames with detector channels (4D-STEM,
  ``[..., nx, ny]``) have no screen: every hypothesis is scored by ``"linear"``.

**The signal-relative background prior.** With ``background_relative`` (default) the
background's prior (mean and sd) is in units of the mean level ``m`` of the prepared images
(:func:`inference.evidence.signal_relative_prior`): unchanged in HRTEM (``m ~ 1``), scaled to the
detected fraction (~1e-2) in annular STEM, where a prior in units of the beam would span ten
times the whole signal and the Laplace approximation breaks down. ``prepare(images, level=m)``
fixes ``m`` (the Ray shards pass the library's level so every shard scores with the same prior).

**The result** is one type, :class:`Score`, whatever the scorer. A non-finite log evidence never
leaves the scorer: it is a :class:`NonFiniteEvidence` error naming the hypothesis (and, from
:func:`inference.score_frames` and the live step, the frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError, pytree_dataclass, static_field
from inference.evidence import NuisancePrior, _check_inputs, laplace_fit, linear_fit, make_nuisance_prior
from inference.noise import NoiseModel
from inference.registration import register_shift
from inference.screen import ScreenCache, _check_shift, make_fast_scorer, prepare_screen_cache

__all__ = ["SCORERS", "ScorerConfig", "ImageSet", "Score", "Scorer", "NonFiniteEvidence", "make_scorer", "method_text"]

#: The scorer kinds (module docstring).
SCORERS = ("laplace", "linear", "fast")

@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """What to score with: one config for every scorer (module docstring).

    Attributes:
        kind: one of :data:`SCORERS`.
        noise: the detector's noise model (:func:`inference.noise_from_detector`); callers that know
            the beam (``score_frames``, the live step) fill it in when it is None.
        prior: nuisance prior (default :func:`inference.make_nuisance_prior`).
        background_relative: background prior relative to the images' mean level (module docstring).
        n_newton: Newton iterations: Laplace (default 6), linear (4), fast when it skips the screen (4).
        alpha, bin_factor, min_exact, n_screen, n_refine, backend: the fast scorer's screen
            (:mod:`inference.screen`): allowed probability of screening out the truth per frame;
            pixels per block side (None: the largest of 4, 2, 1 dividing the frame); at least this
            many hypotheses scored exactly; Newton steps of the screen and of the exact stage from
            the screen's MAP; ``"auto"``, ``"cpu"`` (numba kernel) or ``"jax"`` (XLA stages).
    """

    kind: str = "laplace"
    noise: NoiseModel | None = None
    prior: NuisancePrior | None = None
    background_relative: bool = True
    n_newton: int | None = None
    alpha: float = 1e-6
    bin_factor: int | None = None
    min_exact: int = 16
    n_screen: int = 3
    n_refine: int = 1
    backend: str = "auto"

    def with_noise(self, noise: NoiseModel) -> ScorerConfig:
        """This config with ``noise`` filled in where it is None."""
        return self if self.noise is not None else dataclasses.replace(self, noise=noise)


@pytree_dataclass
class ImageSet:
    """Cached images prepared for one scorer (:meth:`Scorer.prepare`).

    Attributes:
        images: ``[H, ..., nx, ny]`` float32 intensity relative to the incident beam, ``[x, y]``.
        prior: the nuisance prior as used (background relative to ``level`` where configured).
        level: the mean image level the background prior is relative to (1 when absolute).
        screen: the fast scorer's binned cache (None for other scorers and for channel frames).
    """

    images: jax.Array
    prior: NuisancePrior
    level: jax.Array
    screen: ScreenCache | None = None

    @property
    def n_hypotheses(self) -> int:
        return int(self.images.shape[0])


@pytree_dataclass
class Score:
    """One frame scored against ``H`` hypotheses (host numpy arrays, leading axis ``[H]``).

    Attributes:
        log_evidence: log p(frame | h) [nats], nuisance marginalised (fast: exact where ``exact``,
            else the screen's Bayes factor against the screen-best hypothesis added to its exact
            evidence).
        log_likelihood, log_prior: at the nuisance MAP (fast: the screen's where not ``exact``).
        laplace_term: the Laplace correction (Occam factor) [nats].
        scale, background: MAP values (background in intensity units); ``scale_sd``,
            ``background_sd``: Laplace standard deviations.
        shift, shift_sd: ``[H, 2]`` [pixels]: the MAP and sd (``laplace``) or the known shift with
            sd 0 (``linear``, ``fast``).
        grad_norm: |gradient of the log joint| at the returned MAP (convergence diagnostic).
        exact: ``[H]`` bool: scored exactly (all True except hypotheses the fast screen left out).
        screen_log_evidence: the binned frame's evidence (fast with a screen; else ``log_evidence``).
        screen_error_bound: bound on P(true hypothesis screened out) in this frame (0 without a screen).
        margin_nats: the screen's margin (inf without one); n_within_margin: hypotheses it kept.
        screened: whether a screen ran.
        kind: the scorer that made it (static).
    """

    log_evidence: np.ndarray
    log_likelihood: np.ndarray
    log_prior: np.ndarray
    laplace_term: np.ndarray
    scale: np.ndarray
    scale_sd: np.ndarray
    background: np.ndarray
    background_sd: np.ndarray
    shift: np.ndarray
    shift_sd: np.ndarray
    grad_norm: np.ndarray
    exact: np.ndarray
    screen_log_evidence: np.ndarray
    screen_error_bound: float
    margin_nats: float
    n_within_margin: int
    screened: bool
    kind: str = static_field(default="laplace")

    @property
    def n_hypotheses(self) -> int:
        return int(np.shape(self.log_evidence)[0])


class Scorer(NamedTuple):
    """``prepare(images, level=None) -> ImageSet`` (once per beam condition and hypothesis set) and
    ``score(counts, images, exposure, shift=None) -> Score`` (once per frame; ``images`` an
    :class:`ImageSet` or raw ``[H, ..., nx, ny]`` images, prepared on the call)."""

    config: ScorerConfig
    prepare: Callable[..., ImageSet]
    score: Callable[..., Score]


class NonFiniteEvidence(InputError):
    """A scorer gave a non-finite log evidence (NaN or infinite) for some hypotheses of a frame.

    Attributes: ``kind`` (the scorer), ``indices`` (hypotheses, in the scored images' order),
    ``values`` (their log evidence), ``max_count`` (the frame's largest count). ``describe(ids,
    frame)`` words it with the hypotheses' ids and the frame's index."""

    def __init__(self, kind: str, indices, values, max_count: float):
        self.kind, self.indices, self.values, self.max_count = kind, [int(i) for i in indices], list(values), max_count
        super().__init__(self.describe())

    def describe(self, ids=None, frame=None) -> str:
        i = self.indices[0]
        who = f"hypothesis {ids[i]!r}" if ids is not None else f"hypothesis {i}"
        more = f" (and {len(self.indices) - 1} more)" if len(self.indices) > 1 else ""
        where = f"frame {frame}: " if frame is not None else ""
        return (f"{where}the {self.kind} scorer gave a non-finite log evidence ({self.values[0]}) for {who}{more}: no "
                f"nuisance value within the model makes the frame possible, or its counts are corrupt (largest count "
                f"{self.max_count:.3g}); check the frame and the simulated images")  # fmt: skip


def _auto_bin_factor(shape) -> int:
    return next(f for f in (4, 2, 1) if all(int(n) % f == 0 for n in shape[-2:]))


def _check_config(config: ScorerConfig) -> ScorerConfig:
    if not isinstance(config, ScorerConfig):
        raise InputError(f"make_scorer takes a ScorerConfig, got {type(config).__name__}")
    if config.kind not in SCORERS:
        raise InputError(f"unknown scorer {config.kind!r}: expected one of {SCORERS}")
    if not isinstance(config.noise, NoiseModel):
        raise InputError(
            "the scorer needs a noise model: ScorerConfig(noise=inference.noise_from_detector(beam.detector)) "
            f"or make_noise_model(...), got {type(config.noise).__name__}"
        )
    if config.n_newton is not None and int(config.n_newton) < 1:
        raise InputError(f"n_newton must be >= 1 Newton iteration, got {config.n_newton!r}")
    if config.prior is None:
        config = dataclasses.replace(config, prior=make_nuisance_prior())
    return config


def _finite_images(images) -> jax.Array:
    ims = jnp.asarray(images, jnp.float32)
    if ims.ndim < 3:
        raise InputError(
            f"images must be [H, nx, ny] (one cached image per hypothesis) or [H, ..., nx, ny] (detector channels "
            f"first, e.g. 4D-STEM [H, kx, ky, sx, sy]), got shape {list(ims.shape)}"
        )
    if ims.shape[0] == 0:
        raise InputError("the library is empty: got 0 hypothesis images; add at least one hypothesis")
    bad = np.flatnonzero(~np.isfinite(np.asarray(jnp.sum(ims.reshape(ims.shape[0], -1), axis=1))))
    if bad.size:
        raise InputError(
            f"cached images must be finite: hypothesis {int(bad[0])} has NaN or infinite pixels"
            + (f" (and {bad.size - 1} more)" if bad.size > 1 else "")
            + "; re-simulate it"
        )
    return ims


def _host(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(x, dtype)


def _from_fit(fit, kind: str, shift, shift_sd, *, exact=None, screen=None) -> Score:
    n = int(np.shape(fit.log_evidence)[0])
    le = _host(fit.log_evidence)
    return Score(
        log_evidence=le,
        log_likelihood=_host(fit.log_likelihood),
        log_prior=_host(fit.log_prior),
        laplace_term=_host(fit.laplace_term),
        scale=_host(fit.scale),
        scale_sd=_host(fit.scale_sd),
        background=_host(fit.background),
        background_sd=_host(fit.background_sd),
        shift=np.broadcast_to(_host(shift), (n, 2)).copy(),
        shift_sd=np.broadcast_to(_host(shift_sd), (n, 2)).copy(),
        grad_norm=_host(fit.grad_norm),
        exact=np.ones(n, bool) if exact is None else np.asarray(exact, bool),
        screen_log_evidence=le if screen is None else _host(screen.screen_log_evidence),
        screen_error_bound=0.0 if screen is None else float(screen.bound),
        margin_nats=float("inf") if screen is None else float(screen.margin),
        n_within_margin=n if screen is None else int(screen.n_within),
        screened=False if screen is None else bool(screen.screened),
        kind=kind,
    )


def make_scorer(config: ScorerConfig) -> Scorer:
    """The :class:`Scorer` of ``config`` (module docstring). Validates the config; compiled programs
    are shared by every scorer with the same shapes, noise kind and settings."""
    config = _check_config(config)
    noise, kind = config.noise, config.kind
    n_newton = config.n_newton

    def prepare(images, *, level=None) -> ImageSet:
        ims = _finite_images(images)
        if config.background_relative:
            lv = jnp.maximum(jnp.mean(ims), 1e-12) if level is None else jnp.asarray(float(level), jnp.float32)
            if not (np.isfinite(float(lv)) and float(lv) > 0):
                raise InputError(f"the signal level must be finite and > 0 [intensity], got {level!r}")
            p = config.prior
            prior = dataclasses.replace(p, background_mean=p.background_mean * lv, background_sd=p.background_sd * lv)
        else:
            lv, prior = jnp.ones((), jnp.float32), config.prior
        screen = None
        if kind == "fast" and ims.ndim == 3:
            f = config.bin_factor if config.bin_factor is not None else _auto_bin_factor(ims.shape)
            screen = prepare_screen_cache(ims, bin_factor=f)
        return ImageSet(images=ims, prior=prior, level=lv, screen=screen)

    def fast_fn(prior: NuisancePrior, f: int):
        return make_fast_scorer(noise, prior, alpha=config.alpha, bin_factor=f, min_exact=config.min_exact,
                                n_newton=n_newton or 4, n_screen=config.n_screen, n_refine=config.n_refine,
                                backend=config.backend)  # fmt: skip

    if kind == "fast":  # validate the screen's settings now, not at the first frame
        make_fast_scorer(noise, config.prior, alpha=config.alpha, bin_factor=config.bin_factor or 1,
                         min_exact=config.min_exact, n_newton=n_newton or 4, n_screen=config.n_screen,
                         n_refine=config.n_refine, backend=config.backend)  # fmt: skip

    def score(counts, images, exposure, shift=None) -> Score:
        iset = images if isinstance(images, ImageSet) else prepare(images)
        return _finite(_score(counts, iset, exposure, shift), counts)

    def _score(counts, iset: ImageSet, exposure, shift) -> Score:
        sh = _check_shift(shift)
        if kind == "laplace":
            _check_inputs(counts, iset.images, exposure)
            if shift is None:  # a start within the Newton's reach: the frame registered on each image
                y = np.asarray(counts, np.float64)
                sd = float(iset.prior.shift_sd)
                sh = np.asarray([register_shift(y, im, shift_sd=sd) for im in np.asarray(iset.images)], np.float32)
            fit, s, s_sd = laplace_fit(counts, iset.images, exposure, noise, iset.prior, shift0=sh, n_newton=n_newton or 6)
            return _from_fit(fit, kind, s, s_sd)
        if kind == "linear" or iset.screen is None:
            fit = linear_fit(counts, iset.images, exposure, sh, noise, iset.prior, n_newton=n_newton or 4)
            return _from_fit(fit, kind, sh, np.zeros(2))
        if config.bin_factor is not None and iset.screen.bin_factor != config.bin_factor:
            raise InputError(
                f"the screen cache was prepared with bin_factor {iset.screen.bin_factor}, this scorer uses "
                f"{config.bin_factor}; prepare the images with this scorer's prepare()"
            )
        _check_inputs(counts, iset.images, exposure)
        ff = fast_fn(iset.prior, iset.screen.bin_factor)(counts, iset.screen, exposure, shift=sh)
        return _from_fit(ff.fit, kind, sh, np.zeros(2), exact=ff.exact, screen=ff)

    def _finite(sc: Score, counts) -> Score:
        bad = np.flatnonzero(~np.isfinite(sc.log_evidence))
        if bad.size:
            raise NonFiniteEvidence(kind, bad, sc.log_evidence[bad].tolist(), float(np.max(np.asarray(counts))))
        return sc

    return Scorer(config=config, prepare=prepare, score=score)


def method_text(score_or_kind) -> str:
    """The nuisance treatment of a scorer, in words (RESULT.json ``method``, the session record)."""
    kind = score_or_kind if isinstance(score_or_kind, str) else score_or_kind.kind
    return {
        "laplace": "Laplace marginalisation of shift, scale, background per frame",
        "linear": "registered frames; Laplace marginalisation of scale, background per frame",
        "fast": "registered frames; binned screen, then Laplace marginalisation of scale, background per frame for "
        "the hypotheses within the screen's margin (the others keep the screen's Bayes factor)",
    }[kind]
