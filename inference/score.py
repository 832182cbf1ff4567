"""The batch front door: frames + cached images per hypothesis + priors + beam -> a scored library.

:func:`score_frames` is the pure function behind ``hypotest score``: it validates the input,
marginalises the nuisance parameters of every frame for every hypothesis
(:mod:`inference.evidence`), accumulates the posterior (:mod:`inference.posterior`), applies
the rejection rule and returns a :class:`ScoreResult`, which has a JSON form
(:meth:`ScoreResult.to_json_dict`, :meth:`ScoreResult.from_json_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from forward import BeamCondition, InputError
from inference.design import Proposal
from inference.fitcheck import DEFAULT_RATE, fit_check
from inference.frame import Frame
from inference.noise import _check_counts, noise_from_detector
from inference.posterior import (
    RejectionRule,
    absolute_log_evidence,
    find_rejections,
    init_posterior,
    log_bayes_factors,
    make_rejection_rule,
    posterior_probs,
    rule_text,
    update_posterior,
)
from inference.scorer import SCORERS, NonFiniteEvidence, Score, ScorerConfig, make_scorer, method_text

__all__ = ["ScoreResult", "score_frames", "attach_fit_check", "fitted_expectation"]

@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """A scored library (plain data; arrays are numpy, order = the library order).

    Attributes:
        ids: hypothesis ids ``[H]``.
        posterior: posterior probabilities ``[H]``.
        log_evidence: log p(all frames | h) [nats] ``[H]`` (Laplace over the nuisance).
        laplace_term: summed Laplace correction ``d/2 log 2pi - 1/2 log det(-H)`` [nats] ``[H]``:
            the size of the approximation's contribution.
        log10_bayes_factor: against the best hypothesis ``[H]``.
        rejected: ``[H]`` bool; ``reasons``: ``[H]`` text ("" where not rejected).
        nuisance: per hypothesis, per frame MAP ``scale``, ``background`` [intensity] and
            ``shift`` [pixels] with their Laplace standard deviations.
        n_frames, dose: frames used and total dose [e-/Å²].
        rule, method: the rejection rule and the nuisance treatment, as text.
        proposals: proposed next beam conditions (filled by the caller's design step).
        scores: the per-frame :class:`inference.Score` (not serialised).
    """

    ids: tuple[str, ...]
    posterior: np.ndarray
    log_evidence: np.ndarray
    laplace_term: np.ndarray
    log10_bayes_factor: np.ndarray
    rejected: np.ndarray
    reasons: tuple[str, ...]
    nuisance: tuple[dict, ...]
    n_frames: int
    dose: float
    rule: str
    method: str
    proposals: tuple[Proposal, ...] = ()
    scores: tuple[Score, ...] = dataclasses.field(default=(), compare=False, repr=False)
    fit_checks: tuple[dict, ...] = ()
    fit_check_all: dict | None = None
    fit_rate: float = DEFAULT_RATE
    optics: dict | None = None

    @property
    def best(self) -> str:
        return self.ids[int(np.argmax(self.posterior))]

    @property
    def unexplained(self) -> bool:
        """True when the best hypothesis fails the absolute fit check over all frames at
        ``fit_rate`` (:mod:`inference.fitcheck`): no hypothesis of the library explains the data."""
        return self.fit_check_all is not None and self.fit_check_all["p_value"] < self.fit_rate

    @property
    def decision(self) -> str | None:
        """The best hypothesis, or None when the data are unexplained (never a decision then,
        however high its relative posterior)."""
        return None if self.unexplained else self.best

    def unexplained_frames(self) -> list[int]:
        return [t for t, f in enumerate(self.fit_checks) if f["p_value"] < self.fit_rate]

    def with_proposals(self, proposals: Sequence[Proposal]) -> ScoreResult:
        return dataclasses.replace(self, proposals=tuple(proposals))

    def to_json_dict(self) -> dict:
        """A JSON-serialisable dict (floats, lists, strings only)."""
        hyps = []
        for i, hid in enumerate(self.ids):
            hyps.append(
                {
                    "id": hid,
                    "posterior": float(self.posterior[i]),
                    "log_evidence": float(self.log_evidence[i]),
                    "laplace_term": float(self.laplace_term[i]),
                    "log10_bayes_factor": float(self.log10_bayes_factor[i]),
                    "rejected": bool(self.rejected[i]),
                    "reason": self.reasons[i],
                    "nuisance": self.nuisance[i],
                }
            )
        return {
            "schema": "hypotest.score/1",
            "best": self.best,
            "n_frames": self.n_frames,
            "dose_e_per_A2": self.dose,
            "rule": self.rule,
            "method": self.method,
            "hypotheses": hyps,
            "proposals": [p.to_dict() for p in self.proposals],
            **({} if self.fit_check_all is None else {
                "decision": self.decision,
                "unexplained": self.unexplained,
                "fit_check": {"hypothesis": self.best, "rate": self.fit_rate, "all_frames": self.fit_check_all,
                              "frames": list(self.fit_checks), "unexplained_frames": self.unexplained_frames()},
            }),
            **({} if self.optics is None else {"optics": self.optics}),
        }

    @classmethod
    def from_json_dict(cls, d: dict) -> ScoreResult:
        hyps = d["hypotheses"]
        props = tuple(
            Proposal(**{**p, "separates": tuple(tuple(x) for x in p["separates"])}) for p in d.get("proposals", [])
        )
        return cls(
            ids=tuple(h["id"] for h in hyps),
            posterior=np.asarray([h["posterior"] for h in hyps]),
            log_evidence=np.asarray([h["log_evidence"] for h in hyps]),
            laplace_term=np.asarray([h["laplace_term"] for h in hyps]),
            log10_bayes_factor=np.asarray([h["log10_bayes_factor"] for h in hyps]),
            rejected=np.asarray([h["rejected"] for h in hyps], dtype=bool),
            reasons=tuple(h["reason"] for h in hyps),
            nuisance=tuple(h["nuisance"] for h in hyps),
            n_frames=int(d["n_frames"]),
            dose=float(d["dose_e_per_A2"]),
            rule=d["rule"],
            method=d["method"],
            proposals=props,
            fit_checks=tuple(d["fit_check"]["frames"]) if "fit_check" in d else (),
            fit_check_all=d["fit_check"]["all_frames"] if "fit_check" in d else None,
            fit_rate=float(d["fit_check"]["rate"]) if "fit_check" in d else DEFAULT_RATE,
            optics=d.get("optics"),
        )


def _as_frames(frames, beam, sampling):
    """``(counts [T, ...], beam, sampling)`` from a Frame, a list of Frames or an array."""
    if isinstance(frames, Frame):
        frames = [frames]
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Frame) for f in frames):
        shapes = {tuple(np.shape(f.counts)) for f in frames}
        samplings = {f.sampling for f in frames}
        if len(shapes) > 1 or len(samplings) > 1:
            raise InputError(
                f"frames must share one shape and sampling, got shapes {sorted(shapes)} and samplings {sorted(samplings)}"
            )
        doses = {float(f.beam.dose) for f in frames}
        if len(doses) > 1:
            raise InputError(f"frames must share one dose per call, got {sorted(doses)} e-/Å²; score them separately")
        return np.stack([np.asarray(f.counts) for f in frames]), frames[0].beam, frames[0].sampling
    if isinstance(frames, (list, tuple)) and len(frames) == 0:
        raise InputError("no frames given: pass a frame [nx, ny] or a stack [T, nx, ny]")
    if not isinstance(beam, BeamCondition):
        raise InputError(
            f"raw counts need beam=BeamCondition (see forward.make_beam), got {type(beam).__name__}"
        )
    if sampling is None:
        raise InputError("raw counts need sampling=(dx, dy) [Å/pixel] to convert dose to electrons per pixel")
    s = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (2,))
    if not np.all(np.isfinite(s)) or (s <= 0).any():
        raise InputError(f"sampling must be positive [Å/pixel], got {sampling!r}")
    c = np.asarray(frames)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise InputError(f"frames must be [nx, ny] or a stack [T, nx, ny], got shape {list(c.shape)}")
    return c, beam, (float(s[0]), float(s[1]))


def score_frames(
    frames,
    images,
    priors,
    beam: BeamCondition | None = None,
    sampling=None,
    *,
    ids: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    scorer: str | ScorerConfig = "laplace",
    rule: RejectionRule | None = None,
    signal_level: float | None = None,
    fit_rate: float = DEFAULT_RATE,
) -> ScoreResult:
    """Score frames against the cached images of every hypothesis (the one scorer,
    :func:`inference.make_scorer`), accumulate the posterior and apply the rejection rule.

    Args:
        frames: a :class:`Frame`, a list of Frames (same shape, sampling, dose), or raw counts
            ``[nx, ny]`` / ``[T, nx, ny]`` with ``beam`` and ``sampling`` [Å/pixel].
        images: ``[H, nx, ny]`` intensity of each hypothesis under the frames' beam (relative
            to the incident beam), indexed ``[x, y]``, pixel (0, 0) at the cell origin.
        priors: ``[H]`` prior weights (>= 0, need not be normalised).
        ids: ``[H]`` hypothesis ids (default "0", "1", ...); ``names``: for the reasons (default ids).
        scorer: a :class:`inference.ScorerConfig`, or one of :data:`inference.SCORERS` for the
            default config of that kind; its noise model defaults to the beam's detector
            (:func:`inference.noise_from_detector`).
        rule: default :func:`inference.posterior.make_rejection_rule` (Bayes factor < 1e-3).
        signal_level: the mean image level the background prior is relative to (default: the
            mean of ``images``; :mod:`inference.scorer`).
        fit_rate: false-alarm rate of the absolute fit check (:func:`attach_fit_check`).
    """
    counts, beam, sampling = _as_frames(frames, beam, sampling)
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3:
        raise InputError(f"images must be [H, nx, ny] (one cached image per hypothesis), got shape {list(imgs.shape)}")
    if imgs.shape[0] == 0:
        raise InputError("the library is empty: got 0 hypothesis images; add at least one hypothesis")
    pr = np.asarray(priors, dtype=np.float64)
    if pr.shape != (imgs.shape[0],):
        raise InputError(f"got {pr.size} prior weights for {imgs.shape[0]} hypothesis images; give one per hypothesis")
    ids = tuple(str(i) for i in range(imgs.shape[0])) if ids is None else tuple(str(i) for i in ids)
    if len(ids) != imgs.shape[0]:
        raise InputError(f"got {len(ids)} ids for {imgs.shape[0]} hypothesis images")
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise InputError(f"unknown scorer {scorer!r}: expected one of {SCORERS}")
        scorer = ScorerConfig(kind=scorer)
    config = scorer.with_noise(noise_from_detector(beam.detector)) if isinstance(scorer, ScorerConfig) else scorer
    sc = make_scorer(config)
    rule = make_rejection_rule() if rule is None else rule
    prepared = sc.prepare(imgs, level=signal_level)
    checked = [_check_counts(c, imgs.shape[1:], sc.config.noise) for c in counts]

    dose = float(beam.dose)
    exposure = dose * sampling[0] * sampling[1]
    state = init_posterior(pr)
    per_frame = []
    lap = np.zeros(imgs.shape[0])
    for t, c in enumerate(checked):
        try:
            ev = sc.score(c, prepared, exposure)
        except NonFiniteEvidence as exc:  # never into the posterior: name the frame and the hypothesis
            raise InputError(exc.describe(ids, t)) from None
        state = update_posterior(state, ev.log_evidence, dose)
        lap += ev.laplace_term
        per_frame.append(ev)

    rejections = {r.index: r for r in find_rejections(state, rule, ids, names)}
    nuis = []
    for h in range(imgs.shape[0]):
        nuis.append(
            {
                "scale": [float(e.scale[h]) for e in per_frame],
                "scale_sd": [float(e.scale_sd[h]) for e in per_frame],
                "background": [float(e.background[h]) for e in per_frame],
                "background_sd": [float(e.background_sd[h]) for e in per_frame],
                "shift_px": [[float(v) for v in e.shift[h]] for e in per_frame],
                "shift_sd_px": [[float(v) for v in e.shift_sd[h]] for e in per_frame],
            }
        )
    method = method_text(config.kind)
    if any(e.screened for e in per_frame):
        method += f"; P(true hypothesis screened out) <= {max(e.screen_error_bound for e in per_frame):.1e} per frame"
    out = ScoreResult(
        ids=ids,
        posterior=np.asarray(posterior_probs(state), dtype=np.float64),
        log_evidence=absolute_log_evidence(state),
        laplace_term=lap,
        log10_bayes_factor=np.asarray(log_bayes_factors(state), dtype=np.float64) / math.log(10),
        rejected=np.asarray([h in rejections for h in range(imgs.shape[0])]),
        reasons=tuple(rejections[h].reason if h in rejections else "" for h in range(imgs.shape[0])),
        nuisance=tuple(nuis),
        n_frames=len(checked),
        dose=dose * len(checked),
        rule=rule_text(rule),
        method=method,
        scores=tuple(per_frame),
    )
    n_params = 4 if config.kind == "laplace" else 2
    return attach_fit_check(out, checked, imgs, sc.config.noise, exposure, n_params=n_params, rate=fit_rate)


def _check_rate(rate: float) -> float:
    r = float(rate)
    if not (0.0 < r < 0.5):
        raise InputError(f"the fit check's false-alarm rate must be in (0, 0.5), got {rate!r} (default {DEFAULT_RATE})")
    return r


def fitted_expectation(image, score: Score, h: int, exposure: float) -> np.ndarray:
    """Hypothesis ``h``'s expected counts at its MAP nuisance in ``score`` [electrons per pixel]:
    ``exposure (scale I(x - shift) + background)``, floored at 1e-6 of its mean (a fitted
    negative background can make a few pixels' expectation negative; the floor only makes such a
    pixel count as a gross misfit in the fit check). ``image`` as scored (2D images are shifted
    by the score's shift; channel images are not shifted)."""
    from inference.evidence import fourier_shift

    img = np.asarray(image, np.float32)
    sh = np.asarray(score.shift[h], np.float32)
    if img.ndim == 2 and np.any(sh != 0):
        img = np.asarray(fourier_shift(img, sh))
    mu = exposure * (float(score.scale[h]) * img.astype(np.float64) + float(score.background[h]))
    return np.maximum(mu, 1e-6 * max(float(np.mean(mu)), 1e-30))


def attach_fit_check(result: ScoreResult, counts, images, noise, exposure: float, *, n_params: int,
                     rate: float = DEFAULT_RATE, extra_params: int = 0) -> ScoreResult:  # fmt: skip
    """``result`` with the absolute fit check of its best hypothesis (:mod:`inference.fitcheck`).

    Each frame ``t`` is compared with that hypothesis's fitted expectation
    ``mu_t = exposure (scale_t I(x - shift_t) + background_t)`` (the per-frame MAP nuisance of
    ``result.scores``; ``images [H, nx, ny]`` as scored; :func:`fitted_expectation`), ``n_params``
    fitted per frame; the frames together with ``T n_params + extra_params`` (e.g. the optics
    shared by all frames). The check is of the
    *best* hypothesis only: when it fails, no hypothesis explains the frames (the others fit
    worse by their Bayes factors).
    """
    rate = _check_rate(rate)
    if not result.scores:
        return result
    b = int(np.argmax(result.posterior))
    c = np.stack([np.asarray(x, np.float64) for x in counts])
    mu = np.stack([fitted_expectation(images[b], e, b, exposure) for e in result.scores])
    per = tuple(fit_check(noise, c[t], mu[t], n_params=n_params).to_json() for t in range(len(c)))
    tot = fit_check(noise, c, mu, n_params=n_params * len(c) + int(extra_params)).to_json()
    return dataclasses.replace(result, fit_checks=per, fit_check_all=tot, fit_rate=rate)
