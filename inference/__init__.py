"""inference: probability only. Frames and a ``simulate_fn`` in; posteriors, rejections,
refinements and proposals out. Knows nothing of atoms, files or Ray.

The contract with the forward model: ``simulate_fn(params, beam) -> intensity [nx, ny]``,
relative to the incident beam, so expected electrons per pixel = intensity x dose [e-/Å²] x
pixel area [Å²] (see :mod:`inference.noise`).

A frame is scored against the cached images of the hypotheses in one place, the scorer of
:mod:`inference.scorer` (:func:`make_scorer`, :class:`ScorerConfig`, :class:`Score`): every
caller (:func:`score_frames`, the live step, the Ray shards) goes through it.
"""

from inference.changepoint import (
    Segment,
    TrackerInfo,
    TrackerState,
    bocpd,
    init_tracker,
    segment,
    sum_segments,
    tracker_add,
    tracker_drop,
    tracker_update,
    tracker_view,
)
from inference.design import (
    Allocation,
    Proposal,
    allocate_conditions,
    decision_dose_bound,
    design_images,
    expected_information_gain,
    pairwise_kl,
    rank_conditions,
    rank_d_optimal,
)
from inference.evidence import NuisancePrior, fourier_shift, make_nuisance_prior, signal_relative_prior
from inference.fisher import crlb, fisher_information, log_det_fisher
from inference.fitcheck import FitCheck, fit_check, fit_checks
from inference.frame import Frame, make_frame
from inference.laplace import LaplaceInfo, laplace_log_evidence
from inference.noise import (
    NOISE_KINDS,
    NoiseModel,
    expected_electrons,
    log_likelihood,
    make_noise_model,
    noise_from_detector,
    sample_counts,
)
from inference.posterior import (
    PosteriorState,
    Rejection,
    RejectionRule,
    apply_rule,
    find_rejections,
    init_posterior,
    log_bayes_factors,
    make_rejection_rule,
    posterior_probs,
    rejected_mask,
    update_posterior,
)
from inference.refine import (
    MapInfo,
    MapState,
    SamplerConfig,
    make_log_density,
    make_map_refiner,
    map_refine,
    nuts_refine,
)
from inference.optics import OpticsFit, OpticsPrior, fit_optics, make_optics_prior, score_frames_optics
from inference.registration import register_shift
from inference.score import ScoreResult, score_frames
from inference.scorer import SCORERS, ImageSet, NonFiniteEvidence, Score, Scorer, ScorerConfig, make_scorer, method_text
from inference.screen import screen_margin

__all__ = [
    "NOISE_KINDS",
    "SCORERS",
    "Allocation",
    "FitCheck",
    "Frame",
    "ImageSet",
    "LaplaceInfo",
    "MapInfo",
    "MapState",
    "NoiseModel",
    "NonFiniteEvidence",
    "NuisancePrior",
    "OpticsFit",
    "OpticsPrior",
    "PosteriorState",
    "Proposal",
    "Rejection",
    "RejectionRule",
    "SamplerConfig",
    "Score",
    "ScoreResult",
    "Scorer",
    "ScorerConfig",
    "Segment",
    "TrackerInfo",
    "TrackerState",
    "allocate_conditions",
    "apply_rule",
    "bocpd",
    "crlb",
    "decision_dose_bound",
    "design_images",
    "expected_electrons",
    "expected_information_gain",
    "find_rejections",
    "fit_check",
    "fit_checks",
    "fit_optics",
    "fisher_information",
    "fourier_shift",
    "init_posterior",
    "init_tracker",
    "laplace_log_evidence",
    "log_bayes_factors",
    "log_det_fisher",
    "log_likelihood",
    "make_frame",
    "make_log_density",
    "make_map_refiner",
    "make_noise_model",
    "make_optics_prior",
    "make_nuisance_prior",
    "make_rejection_rule",
    "make_scorer",
    "map_refine",
    "method_text",
    "noise_from_detector",
    "nuts_refine",
    "pairwise_kl",
    "posterior_probs",
    "rank_conditions",
    "rank_d_optimal",
    "register_shift",
    "rejected_mask",
    "sample_counts",
    "score_frames",
    "score_frames_optics",
    "screen_margin",
    "segment",
    "signal_relative_prior",
    "sum_segments",
    "tracker_add",
    "tracker_drop",
    "tracker_update",
    "tracker_view",
    "update_posterior",
]
