"""The live step: one pure function from the session's state and a batch of frames to the next state.

    state, info = live_step(state, batch, images)

``state`` (:class:`LiveState`, frozen) holds everything the posterior depends on: the hypotheses'
ids, names and prior weights, the change-point tracker (:mod:`inference.changepoint`), which
hypotheses are rejected (with the reason) or dropped, the step count, the dose used and the
decision. ``batch`` is the frames queued since the last step (:class:`PendingFrame`, oldest
first). ``images`` (:class:`StepImages`) gives the simulated images under a beam (the session's
:class:`hypotest.live.model.ImageModel`, memoised per beam) prepared for the session's scorer
(:func:`inference.make_scorer`). ``info`` (:class:`StepInfo`) says what happened: frames refused
with the reason, the frames of another beam left for the next step, the step's record entry,
rejections and returns (:class:`inference.Rejection`), a decision reached or undone.

What one step does:

1. **validate** every frame: its beam (:func:`hypotest.beamfile.parse_beam`) and its counts against
   the frame shape of that beam and the noise model; a frame that fails is refused (fate
   "rejected") with the reason;
2. **coalesce**: the valid frames taken under the beam of the first one are summed into one frame
   (a sum of Poisson frames is Poisson at the summed dose); frames under another beam are left for
   the next step;
3. **register** the summed frame against the current best hypothesis's image: the MAP drift
   (:func:`inference.register_shift`);
4. **score** every active hypothesis (the one scorer: the registered drift is the known shift of
   ``linear``/``fast``; ``laplace`` starts its Newton at the prior mean, zero drift, as it always
   has in the live session (:func:`scorer_shift`));
5. **track**: the step's log evidence updates the change-point tracker and the segment posterior
   (:func:`inference.tracker_update`);
6. **reject** with the one rule (:func:`inference.apply_rule`: Bayes factor against the best below
   the threshold, over the current segment), and **decide** when the best reaches the target.

The threaded runner (:class:`hypotest.live.runner.LiveSession`: ingest, loop, design, pub/sub,
control), its lock-step form ``run_sync``, the replay of a record and resume all call this one
function; :func:`add_hypothesis` and :func:`drop_hypothesis` change the hypothesis set between
steps, and :func:`restore_state` rebuilds the state from a record.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from forward import InputError
from hypotest.beamfile import parse_beam
from hypotest.live.model import beam_key
from inference import (
    ImageSet,
    NonFiniteEvidence,
    Rejection,
    RejectionRule,
    Score,
    ScorerConfig,
    TrackerInfo,
    TrackerState,
    apply_rule,
    init_tracker,
    make_scorer,
    register_shift,
    tracker_add,
    tracker_drop,
    tracker_update,
    tracker_view,
)
from inference.noise import _check_counts

__all__ = [
    "make_live_config",
    "PendingFrame",
    "LiveConfig",
    "LiveState",
    "StepInfo",
    "StepImages",
    "init_live_state",
    "live_step",
    "scorer_shift",
    "add_hypothesis",
    "drop_hypothesis",
    "rescore_steps",
    "restore_state",
    "restart_posterior",
    "segment_fit",
    "step_fit_check",
]


#: A frame whose total counts differ from what its stated dose predicts by more than this factor
#: (either way, beyond five Poisson standard deviations) is refused: calibration errors of the
#: dose, the gain or the simulated contrast are factors of ~2, a wrong header orders of magnitude.
DOSE_FACTOR = 10.0


@dataclasses.dataclass(frozen=True)
class PendingFrame:
    """A frame received and recorded, waiting to be scored.

    Attributes:
        index: arrival order in the session record; source_id: the source's frame id.
        counts: the counts as received (``[mx, my]``; 4D-STEM ``[sx, sy, kx, ky]``).
        beam: the beam it was taken under (BEAM.json form); label: that beam's candidate label.
        t_source, t_received: source timestamp and arrival time [s since the epoch].
    """

    index: int
    source_id: int
    counts: np.ndarray
    beam: dict
    label: str
    t_source: float
    t_received: float


@dataclasses.dataclass(frozen=True)
class LiveConfig:
    """What the step does, fixed for a session.

    Attributes:
        scorer: the one scorer's config (:class:`inference.ScorerConfig`, with the session's noise model).
        rule: the rejection rule (:func:`inference.make_rejection_rule`).
        target: decide when the best hypothesis's posterior reaches this.
        stop_on_decision: keep a decision once reached (else a later switch undoes it).
        dose_factor: refuse a frame whose counts are off by more than this factor from what its
            stated dose gives (beyond Poisson noise; 0: no check).
        fit_rate: false-alarm rate of the absolute fit check of each step's best hypothesis
            (:mod:`inference.fitcheck`): a step it fails is ``unexplained`` and no decision is
            reached on it.
    """

    scorer: ScorerConfig  # with noise and prior filled in (:func:`make_live_config`)
    rule: RejectionRule
    target: float = 0.99
    stop_on_decision: bool = True
    dose_factor: float = DOSE_FACTOR
    fit_rate: float = 0.01


@dataclasses.dataclass(frozen=True)
class LiveState:
    """The session's posterior state (module docstring); every function returns a new one.

    Attributes:
        config: :class:`LiveConfig`.
        ids, names, priors: every hypothesis in session order (added ones last) and its prior weight.
        tracker: the change-point tracker over the steps.
        rejected: indices the rule rejects now; reasons: ``[H]`` the reason of each ("" if not).
        dropped: indices the operator dropped.
        step: steps done; dose_used: dose of every step [e-/Å²].
        step_frames, step_doses: frames and dose [e-/Å²] of each step (for the reasons).
        decision: the decision reached (None until then).
        fit_sums: the fit check summed over the current segment's steps: (deviance, expected,
            variance, steps, the segment's first step) (:func:`segment_fit`).
    """

    config: LiveConfig
    ids: tuple[str, ...]
    names: tuple[str, ...]
    priors: tuple[float, ...]
    tracker: TrackerState
    rejected: frozenset = frozenset()
    reasons: tuple[str, ...] = ()
    dropped: frozenset = frozenset()
    step: int = 0
    dose_used: float = 0.0
    step_frames: tuple[int, ...] = ()
    step_doses: tuple[float, ...] = ()
    decision: dict | None = None
    fit_sums: tuple[float, float, float, int, int] = (0.0, 0.0, 0.0, 0, 0)

    @property
    def n_hypotheses(self) -> int:
        return len(self.ids)

    def active(self) -> np.ndarray:
        """Indices of the hypotheses not dropped."""
        return np.asarray([i for i in range(len(self.ids)) if i not in self.dropped], dtype=int)

    def view(self) -> TrackerInfo:
        """The posterior over the current segment."""
        return tracker_view(self.tracker)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What one :func:`live_step` did.

    Attributes:
        fates: frames refused: ``{"index", "source_id", "fate": "rejected", "reason"}``.
        rest: valid frames under another beam, for the next step.
        entry: the record's ``step`` fields (the runner adds ``t``, ``proposals``, ``latency_s``);
            None when no frame was valid.
        events: rejections and returns of this step (:class:`inference.Rejection`).
        decision: the decision reached at this step (None if none); decision_undone: a switch
            undid an earlier decision (``stop_on_decision`` off).
        view: the posterior after the step; score: its :class:`inference.Score` ``[active]``.
        counts, beam, exposure, active: the scored frame in the model layout, its beam, its
            exposure [e-/Å² x Å²] and the hypotheses scored (for the dashboard's residual).
        timings: seconds spent in ``preprocess``, ``score`` and ``update``.
    """

    fates: tuple[dict, ...] = ()
    rest: tuple[PendingFrame, ...] = ()
    entry: dict | None = None
    events: tuple[Rejection, ...] = ()
    decision: dict | None = None
    decision_undone: bool = False
    view: TrackerInfo | None = None
    score: Score | None = None
    counts: np.ndarray | None = None
    beam: dict | None = None
    exposure: float = 0.0
    active: np.ndarray | None = None
    timings: dict = dataclasses.field(default_factory=dict)


class StepImages:
    """The images a step scores against: the session's image model (``images(beam) [H, ...]``,
    ``frame_shape_of``, ``pixel_area_of``, ``model_layout``) and, memoised per (beam, hypotheses,
    scorer config), the image sets prepared for the scorer (:meth:`inference.Scorer.prepare`: the
    fast scorer's binned screen, the signal-relative prior). A cache of results, never of
    decisions: what a step computes does not depend on what is cached."""

    def __init__(self, model, max_cached: int = 8):
        self.model = model
        self._lock = threading.Lock()
        self._prepared: collections.OrderedDict = collections.OrderedDict()
        self._scorers: dict = {}
        self._max = int(max_cached)

    def scorer(self, config: ScorerConfig):
        """The scorer of ``config`` (made once per config object: configs hold arrays, so they are
        told apart by identity)."""
        with self._lock:
            hit = self._scorers.get(id(config))
            if hit is None or hit[0] is not config:
                hit = self._scorers[id(config)] = (config, make_scorer(config))
            return hit[1]

    def prepared(self, beam: dict, active: Sequence[int], config: ScorerConfig) -> ImageSet:
        """The images of hypotheses ``active`` under ``beam``, prepared for ``config``'s scorer."""
        key = (beam_key(beam), tuple(int(i) for i in active), id(config))
        with self._lock:
            hit = self._prepared.get(key)
            if hit is not None and hit[0] is config:
                self._prepared.move_to_end(key)
                return hit[1]
        iset = self.scorer(config).prepare(self.model.images(beam)[np.asarray(active, dtype=int)])
        with self._lock:
            self._prepared[key] = (config, iset)
            while len(self._prepared) > self._max:
                self._prepared.popitem(last=False)
        return iset

    def clear(self) -> None:
        """Forget the prepared sets (after the model's images change, e.g. a hypothesis added)."""
        with self._lock:
            self._prepared.clear()


def make_live_config(scorer: str, noise, *, rule_threshold: float = 1e-3, target: float = 0.99,
                     stop_on_decision: bool = True, dose_factor: float = DOSE_FACTOR, fit_rate: float = 0.01) -> LiveConfig:  # fmt: skip
    """A validated :class:`LiveConfig`: the one scorer of kind ``scorer`` (:data:`inference.SCORERS`;
    a live frame's drift is registered, so ``"linear"`` and ``"fast"`` score at it) with the
    default nuisance prior, and the Bayes-factor rule at ``rule_threshold``."""
    from inference import SCORERS, make_nuisance_prior, make_rejection_rule

    if scorer not in SCORERS:
        raise InputError(f"unknown scorer {scorer!r}: expected one of {SCORERS}")
    if not 0 < rule_threshold < 1:
        raise InputError(f"rejection threshold must be in (0, 1), got {rule_threshold!r}")
    if not 0.5 < target < 1:
        raise InputError(f"decision target must be in (0.5, 1), got {target!r}")
    f = float(dose_factor)
    if not (f == 0 or (math.isfinite(f) and f > 1)):
        raise InputError(f"dose_factor must be > 1 (or 0 to accept any dose), got {dose_factor!r}")
    if not 0 < float(fit_rate) < 0.5:
        raise InputError(f"the fit check's false-alarm rate must be in (0, 0.5), got {fit_rate!r}")
    config = ScorerConfig(kind=scorer, noise=noise, prior=make_nuisance_prior())
    make_scorer(config)  # validate now, not at the first frame
    return LiveConfig(scorer=config, rule=make_rejection_rule("bayes_factor", rule_threshold), target=float(target),
                      stop_on_decision=bool(stop_on_decision), dose_factor=f, fit_rate=float(fit_rate))  # fmt: skip


def init_live_state(config: LiveConfig, ids, names, priors, *, expected_run_length: float = 200.0) -> LiveState:
    """The state before the first step: the prior over the library."""
    ids, names = tuple(str(i) for i in ids), tuple(str(n) for n in names)
    pr = tuple(float(p) for p in priors)
    if not ids:
        raise InputError("the library is empty: the session needs at least one hypothesis")
    if not (len(ids) == len(names) == len(pr)):
        raise InputError(f"got {len(ids)} ids, {len(names)} names and {len(pr)} priors; give one of each per hypothesis")
    tracker = init_tracker(np.asarray(pr), expected_run_length=expected_run_length)
    return LiveState(config=config, ids=ids, names=names, priors=pr, tracker=tracker, reasons=("",) * len(ids))


def _validate(p: PendingFrame, images: StepImages, noise, best: int, factor: float) -> tuple[np.ndarray | None, str]:
    try:
        bf = parse_beam(p.beam, where=f"frame {p.source_id} beam")
        c = _check_counts(p.counts, tuple(images.model.frame_shape_of(p.beam)), noise)
        return c, _dose_problem(p, c, bf.beam, images, noise, best, factor)
    except InputError as exc:
        return None, f"frame {p.source_id}: {exc}"


def _dose_problem(p: PendingFrame, counts: np.ndarray, bc, images: StepImages, noise, best: int, factor: float) -> str:
    """Why a frame's counts contradict the dose its beam states ("" if they do not).

    Under the current best hypothesis the frame's expected counts total ``N = gain x dose x pixel
    area x sum(I)``. A frame whose total is off by more than ``factor`` either way, beyond five
    Poisson standard deviations, was not taken at that dose (or with that gain): its header is
    wrong (a forged or stale dose would otherwise be trusted: scored at 1e9 e-/Å² while its counts
    match 400, a hypothesis jumps to P = 1). Gaussian read noise alone has no such scale: not
    checked."""
    if factor <= 0 or noise.kind == "gaussian":
        return ""
    model = images.model
    expected = float(bc.dose) * model.pixel_area_of(p.beam) * float(np.sum(model.images(p.beam)[best], dtype=np.float64))
    gain = float(noise.gain)
    got = float(np.sum(counts, dtype=np.float64)) / gain
    if not (expected > 0 and math.isfinite(expected)):
        return ""
    hi, lo = expected * factor, expected / factor
    if got > hi + 5.0 * math.sqrt(hi) + 5.0 or got < lo - 5.0 * math.sqrt(lo) - 5.0:
        ratio = got / expected
        return (f"frame {p.source_id}: its counts ({got:.4g} electrons at gain {gain:g}) are {ratio:.2g} x what the stated "
                f"dose of {float(bc.dose):g} e-/Å² gives under the current best hypothesis ({expected:.4g}): beyond the "
                f"accepted factor {factor:g}, so the frame was not taken at that dose (they imply ~{float(bc.dose) * ratio:.3g} "
                f"e-/Å²); fix the dose in the frame's header or BEAM.json, or the detector gain")  # fmt: skip
    return ""


def live_step(state: LiveState, batch: Sequence[PendingFrame], images: StepImages) -> tuple[LiveState, StepInfo]:
    """One step of the live session (module docstring)."""
    t0 = time.perf_counter()
    cfg = state.config
    noise = cfg.scorer.noise
    fates, valid = [], []
    best_prev = int(state.view().best)
    for p in batch:
        c, reason = _validate(p, images, noise, best_prev, cfg.dose_factor)
        if reason:
            fates.append({"index": p.index, "source_id": p.source_id, "fate": "rejected", "reason": reason})
        else:
            valid.append((p, c))
    if not valid:
        return state, StepInfo(fates=tuple(fates))
    key = beam_key(valid[0][0].beam)
    group = [(p, c) for p, c in valid if beam_key(p.beam) == key]
    rest = tuple(p for p, _ in valid if beam_key(p.beam) != key)
    beam = group[0][0].beam
    bc = parse_beam(beam, where="frame beam").beam
    model = images.model
    counts = model.model_layout(beam, np.sum([c for _, c in group], axis=0, dtype=np.float32))
    n = len(group)
    dose = float(bc.dose) * n
    exposure = dose * model.pixel_area_of(beam)
    active = state.active()
    prepared = images.prepared(beam, active, cfg.scorer)
    ref = model.images(beam)[best_prev]
    drift = register_shift(counts, ref, shift_sd=float(cfg.scorer.prior.shift_sd))
    mean_expected = float(np.mean(ref)) * exposure * float(bc.detector.gain)
    dose_ratio = float(np.mean(counts)) / mean_expected if mean_expected > 0 else float("nan")
    t1 = time.perf_counter()

    try:
        ev = images.scorer(cfg.scorer).score(counts, prepared, exposure, scorer_shift(cfg.scorer.kind, drift))
    except NonFiniteEvidence as exc:  # never into the posterior: the frames are refused with the reason
        names = [state.names[i] for i in active]
        for p, _ in group:
            fates.append({"index": p.index, "source_id": p.source_id, "fate": "rejected",
                          "reason": exc.describe(names, p.source_id if n == 1 else f"{p.source_id} (coalesced)")})  # fmt: skip
        return state, StepInfo(fates=tuple(fates), rest=rest)
    t2 = time.perf_counter()

    h = state.n_hypotheses
    le = np.full(h, -np.inf)
    le[active] = ev.log_evidence
    tracker, view = tracker_update(state.tracker, le)
    step = state.step
    step_frames = state.step_frames + (n,)
    step_doses = state.step_doses + (dose,)
    seg = slice(view.segment_start, None)
    act = np.zeros(h, bool)
    act[active] = True
    rejected, events = apply_rule(
        cfg.rule, view.log10_bayes_factor * math.log(10), view.log_posterior, state.rejected, ids=state.ids,
        names=state.names, active=act, n_frames=sum(step_frames[seg]), dose=sum(step_doses[seg]), step=step,
        frames=[p.index for p, _ in group],
    )  # fmt: skip
    reasons = list(state.reasons)
    for e in events:
        reasons[e.index] = e.reason if e.event == "rejected" else ""
    best = int(view.best)
    post = view.posterior
    dose_used = state.dose_used + dose
    check = step_fit_check(counts, model.images(beam)[best], ev, int(np.flatnonzero(active == best)[0]) if best in active else 0,
                       exposure, noise, cfg.fit_rate)  # fmt: skip
    fit_sums, seg_check = segment_fit(state.fit_sums, check, int(view.segment_start), cfg.fit_rate)
    check["segment"] = seg_check
    explained = not (check["unexplained"] or seg_check["unexplained"])
    decision, reached, undone = state.decision, None, False
    if post[best] >= cfg.target and decision is None and explained:
        decision = reached = {"id": state.ids[best], "name": state.names[best], "posterior": float(post[best]),
                              "step": step, "dose_used_e_per_A2": dose_used, "frames": sum(step_frames)}  # fmt: skip
    elif decision is not None and post[best] < cfg.target and not cfg.stop_on_decision:
        decision, undone = None, True
    new = dataclasses.replace(state, tracker=tracker, rejected=rejected, reasons=tuple(reasons), step=step + 1,
                              dose_used=dose_used, step_frames=step_frames, step_doses=step_doses,
                              decision=decision, fit_sums=fit_sums)  # fmt: skip
    t3 = time.perf_counter()

    bi = int(np.flatnonzero(active == best)[0]) if best in active else 0
    fit = {
        "hypothesis": state.ids[best],
        "scale": float(ev.scale[bi]), "scale_sd": float(ev.scale_sd[bi]),
        "background": float(ev.background[bi]), "background_sd": float(ev.background_sd[bi]),
        "shift_px": [float(v) for v in ev.shift[bi]], "shift_sd_px": [float(v) for v in ev.shift_sd[bi]],
    }  # fmt: skip
    entry = {
        "step": step, "frames": [p.index for p, _ in group], "source_ids": [p.source_id for p, _ in group],
        "coalesced": n - 1, "beam_label": group[0][0].label, "beam": beam, "dose_e_per_A2": dose,
        "ids": list(state.ids), "log_evidence": le.tolist(), "posterior": post.tolist(),
        "log10_bayes_factor": view.log10_bayes_factor.tolist(),
        "rejected": {state.ids[i]: reasons[i] for i in sorted(rejected)}, "fit": fit, "drift_px": list(drift),
        "screen_error_bound": ev.screen_error_bound, "dose_ratio": dose_ratio, "segment_start": view.segment_start,
        "change_point": bool(view.change_point), "map_state": state.ids[best], "fit_check": check,
    }  # fmt: skip
    info = StepInfo(fates=tuple(fates), rest=rest, entry=entry, events=tuple(events), decision=reached,
                    decision_undone=undone, view=view, score=ev, counts=counts, beam=beam, exposure=exposure,
                    active=active, timings={"preprocess": t1 - t0, "score": t2 - t1, "update": t3 - t2})  # fmt: skip
    return new, info


def segment_fit(sums, check: dict, segment_start: int, rate: float) -> tuple[tuple, dict]:
    """The fit check over the current segment's steps: each step's statistic, expectation and
    variance (of its best hypothesis at that step) added, restarted at a change point; the sum of
    many pixels over several frames is close to normal, so ``z = (D - E) / sqrt(V)`` and
    ``p = P(N(0, 1) >= z)``. At low dose one frame's check has little power (the deviance of a
    wrong structure grows with dose, its noise does not): the segment's check is what sees a
    structure that no hypothesis explains after enough frames."""
    from scipy.stats import norm

    d, e, v, n, start = sums
    if n == 0 or start != segment_start:
        d, e, v, n = 0.0, 0.0, 0.0, 0
    d, e, v, n = d + check["deviance"], e + check["expected"], v + check["sd"] ** 2, n + 1
    z = (d - e) / math.sqrt(v) if v > 0 else 0.0
    p = float(norm.sf(z))
    return (d, e, v, n, segment_start), {"z": round(z, 3), "p_value": float(f"{p:.4g}"), "steps": n,
                                         "unexplained": bool(p < rate)}


def step_fit_check(counts, image, ev, bi: int, exposure: float, noise, rate: float) -> dict:
    """The absolute fit check of the step's best hypothesis (:func:`inference.fit_check`): the
    counts against ``exposure (scale I(x - shift) + background)`` at its per-step MAP nuisance,
    scale and background fitted (2 parameters; the shift is the registered drift)."""
    from inference import fit_check
    from inference.score import fitted_expectation

    mu = fitted_expectation(image, ev, bi, exposure)
    fc = fit_check(noise, np.asarray(counts, np.float64), mu, n_params=2).to_json()
    return {**fc, "rate": rate, "unexplained": bool(fc["p_value"] < rate)}


def add_hypothesis(state: LiveState, hypothesis_id: str, name: str, prior: float, past_log_evidence) -> LiveState:
    """``state`` with a new hypothesis (prior weight ``prior`` on the scale of the existing weights)
    and its log evidence for every past step (:func:`rescore_steps`)."""
    if hypothesis_id in state.ids:
        raise InputError(f"hypothesis {name!r} has the same structure as an existing one (id {hypothesis_id})")
    p = float(prior)
    if not (math.isfinite(p) and p > 0):
        raise InputError(f"the prior weight of a new hypothesis must be finite and > 0, got {prior!r}")
    # the weight relative to the largest existing one, on the tracker's normalised log scale
    lw = math.log(p) - math.log(max(state.priors)) + float(np.max(state.tracker.log_prior))
    return dataclasses.replace(
        state, ids=state.ids + (str(hypothesis_id),), names=state.names + (str(name),), priors=state.priors + (p,),
        tracker=tracker_add(state.tracker, lw, past_log_evidence), reasons=state.reasons + ("",),
    )  # fmt: skip


def restart_posterior(state: LiveState, expected_run_length: float = 200.0) -> LiveState:
    """``state`` with the posterior back at the prior (every hypothesis, added ones included;
    dropped ones stay dropped; no rejections, no decision, the fit check's sums empty), the step
    and dose counters kept: after the session's optics changed (a calibration learned from the
    frames, :meth:`hypotest.live.runner.LiveSession._learn_optics`), the steps before were scored
    against the wrong images and no longer count."""
    tracker = init_tracker(np.asarray(state.priors), expected_run_length=expected_run_length)
    for i in sorted(state.dropped):
        tracker = tracker_drop(tracker, i)
    return dataclasses.replace(state, tracker=tracker, rejected=frozenset(), reasons=("",) * state.n_hypotheses,
                               decision=None, fit_sums=(0.0, 0.0, 0.0, 0, 0))  # fmt: skip


def drop_hypothesis(state: LiveState, index: int) -> LiveState:
    """``state`` with hypothesis ``index`` dropped (its evidence no longer counts)."""
    i = int(index)
    if i in state.dropped:
        raise InputError(f"hypothesis {state.ids[i]!r} is already dropped")
    if len(state.dropped) + 1 >= state.n_hypotheses:
        raise InputError("cannot drop the last hypothesis of the session")
    reasons = list(state.reasons)
    reasons[i] = ""
    return dataclasses.replace(state, dropped=state.dropped | {i}, rejected=state.rejected - {i}, reasons=tuple(reasons),
                               tracker=tracker_drop(state.tracker, i))  # fmt: skip


def scorer_shift(kind: str, drift) -> tuple[float, float]:
    """The shift handed to the scorer of ``kind`` for a frame registered at ``drift`` [pixels].

    ``linear`` and ``fast`` score at the registered drift. ``laplace`` marginalises the shift and
    starts its damped Newton at the prior mean (0, 0): a live frame's drift is small between steps,
    and on sparse 4D-STEM frames the registered drift is itself noisy, so starting there settled on
    a lower mode for the true structure (the MoS2 design benchmark, seed 2: 1760 e-/Å² to a
    decision, 43 of its 44 frames 4D-STEM, instead of 640).
    """
    return (0.0, 0.0) if kind == "laplace" else (float(drift[0]), float(drift[1]))


def rescore_steps(steps: Sequence[dict], frame_fn: Callable[[int], np.ndarray], images: StepImages, config: LiveConfig,
                  index: int, ids: Sequence[str]) -> list[float]:  # fmt: skip
    """Log evidence of hypothesis ``index`` (of the model) for every recorded step: the step's
    frames summed again (``frame_fn(i)`` reads frame ``i`` of the record), scored at the step's
    drift with the prior of the hypotheses scored then (the level of their images)."""
    model = images.model
    col = {h: k for k, h in enumerate(ids)}
    sc = images.scorer(config.scorer)
    out = []
    for e in steps:
        beam = e["beam"]
        counts = model.model_layout(beam, np.sum([frame_fn(j).astype(np.float32) for j in e["frames"]], axis=0))
        exposure = e["dose_e_per_A2"] * model.pixel_area_of(beam)
        active = [col[h] for h, v in zip(e["ids"], e["log_evidence"]) if v is not None and h in col]
        level = images.prepared(beam, active, config.scorer).level
        one = sc.prepare(model.images(beam)[index : index + 1], level=float(level))
        shift = scorer_shift(config.scorer.kind, e["drift_px"])
        out.append(float(sc.score(counts, one, exposure, shift).log_evidence[0]))
    return out


def restore_state(state: LiveState, steps: Sequence[dict], events: Sequence[dict], *,
                  rescore: Callable[[int, dict], list[float]] | None = None) -> LiveState:  # fmt: skip
    """The state after a recorded session: ``state`` (from :func:`init_live_state` with the
    library's hypotheses) advanced by the recorded ``step`` lines' log evidence, with the
    hypotheses added and dropped (``events``: the record's other lines) applied before the step
    they preceded. An added hypothesis's past evidence comes from its record line
    (``past_log_evidence``) or, for records without it, from ``rescore(index, event)``."""
    changes = [e for e in events if e["kind"] in ("hypothesis_added", "hypothesis_dropped", "optics")]
    changes.sort(key=lambda e: e["step"])  # stable: record order within a step
    k = 0

    def apply_changes(upto: int, st: LiveState) -> LiveState:
        nonlocal k
        while k < len(changes) and changes[k]["step"] <= upto:
            e = changes[k]
            k += 1
            if e["kind"] == "hypothesis_added":
                past = e.get("past_log_evidence")
                if past is None:
                    past = rescore(st.n_hypotheses, e) if rescore is not None else [-np.inf] * st.step
                past = [-np.inf if v is None else v for v in past]
                st = add_hypothesis(st, e["id"], e["name"], e["prior"], past)
            elif e["kind"] == "optics":
                st = restart_posterior(st, float(e.get("expected_run_length", 200.0)))
            elif e["id"] in st.ids:
                st = drop_hypothesis(st, st.ids.index(e["id"]))
        return st

    for rec in steps:
        state = apply_changes(rec["step"], state)
        col = {h: i for i, h in enumerate(state.ids)}
        le = np.full(state.n_hypotheses, -np.inf)
        for h, v in zip(rec["ids"], rec["log_evidence"]):
            if h in col:
                le[col[h]] = -np.inf if v is None else v
        tracker, view = tracker_update(state.tracker, le)
        fit_sums = state.fit_sums
        if rec.get("fit_check"):
            fit_sums, _ = segment_fit(fit_sums, rec["fit_check"], int(view.segment_start), state.config.fit_rate)
        state = dataclasses.replace(state, tracker=tracker, step=state.step + 1, fit_sums=fit_sums,
                                    dose_used=state.dose_used + rec["dose_e_per_A2"],
                                    step_frames=state.step_frames + (len(rec["frames"]),),
                                    step_doses=state.step_doses + (rec["dose_e_per_A2"],))  # fmt: skip
    state = apply_changes(10**12, state)
    if steps:
        col = {h: i for i, h in enumerate(state.ids)}
        rej = {col[h]: r for h, r in steps[-1]["rejected"].items() if h in col and col[h] not in state.dropped}
        reasons = [""] * state.n_hypotheses
        for i, r in rej.items():
            reasons[i] = r
        state = dataclasses.replace(state, rejected=frozenset(rej), reasons=tuple(reasons))
    return state
