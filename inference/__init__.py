"""inference: probability only. Frames and a ``simulate_fn`` in; posteriors, rejections,
refinements and proposals out. Knows nothing of atoms, files or Ray.

The contract with the forward model: ``simulate_fn(params, beam) -> intensity [nx, ny]``,
relative to the incident beam, so expected electrons per pixel = intensity x dose [e-/Å²] x
pixel area [Å²] (see :mod:`inference.noise`).
"""

from inference.changepoint import Segment, bocpd, segment, sum_segments
from inference.design import (
    Proposal,
    design_images,
    expected_information_gain,
    pairwise_kl,
    rank_conditions,
    rank_d_optimal,
)
from inference.evidence import (
    Evidence,
    NuisancePrior,
    fourier_shift,
    make_laplace_scorer,
    make_linear_scorer,
    make_nuisance_prior,
)
from inference.fisher import crlb, fisher_information, log_det_fisher
from inference.frame import Frame, make_frame
from inference.hmm import (
    HMMInfo,
    HMMState,
    RejectionEvent,
    hmm_filter,
    hmm_step,
    init_hmm,
    make_transition_matrix,
    rejection_events,
)
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
from inference.score import SCORERS, ScoreResult, score_frames
from inference.screen import FastScore, ScreenCache, make_fast_scorer, prepare_screen_cache, screen_margin

__all__ = [
    "NOISE_KINDS",
    "SCORERS",
    "Evidence",
    "FastScore",
    "Frame",
    "HMMInfo",
    "HMMState",
    "LaplaceInfo",
    "MapInfo",
    "MapState",
    "NoiseModel",
    "NuisancePrior",
    "PosteriorState",
    "Proposal",
    "Rejection",
    "RejectionEvent",
    "RejectionRule",
    "SamplerConfig",
    "ScoreResult",
    "ScreenCache",
    "Segment",
    "bocpd",
    "crlb",
    "design_images",
    "expected_electrons",
    "expected_information_gain",
    "find_rejections",
    "fisher_information",
    "fourier_shift",
    "hmm_filter",
    "hmm_step",
    "init_hmm",
    "init_posterior",
    "laplace_log_evidence",
    "log_bayes_factors",
    "log_det_fisher",
    "log_likelihood",
    "make_frame",
    "make_laplace_scorer",
    "make_fast_scorer",
    "make_linear_scorer",
    "make_log_density",
    "make_map_refiner",
    "make_noise_model",
    "make_nuisance_prior",
    "make_rejection_rule",
    "make_transition_matrix",
    "map_refine",
    "noise_from_detector",
    "nuts_refine",
    "pairwise_kl",
    "posterior_probs",
    "prepare_screen_cache",
    "rank_conditions",
    "rank_d_optimal",
    "rejected_mask",
    "rejection_events",
    "sample_counts",
    "score_frames",
    "screen_margin",
    "segment",
    "sum_segments",
    "update_posterior",
]
