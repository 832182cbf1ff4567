"""The embedded default session: a built-in library, its imaging settings and candidate beams, and a
simulated microscope (:func:`make_demo_session`). Resuming and replaying a recorded session is
:mod:`hypotest.live.resume`.

Per built-in library the imaging settings are fixed here (energy, spherical aberration, dose per
frame); the candidate beams the design step chooses from are a defocus series in multiples of the
Scherzer defocus (Scherzer, J. Appl. Phys. 20 (1949) 20), where the exit waves are reused and a
new condition costs one FFT pair per hypothesis, and, where the settings name detectors, annular
dark-field STEM with an aberration-corrected probe (Z-contrast: it tells heavy substituents apart
where phase contrast at the same dose cannot; Krivanek et al., Nature 464 (2010) 571).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from forward import InputError
from forward.constants import scherzer_defocus
from hypotest.hypothesis import load_hypotheses
from hypotest.live.model import ImageModel
from hypotest.live.runner import LiveSession
from hypotest.live.simscope import SimulatedMicroscopeSource

__all__ = ["LIBRARY_SETTINGS", "ImagingSettings", "demo_beams", "make_demo_session", "outside_truth"]


@dataclasses.dataclass(frozen=True)
class ImagingSettings:
    energy: float  # [eV]
    c30: float  # [Å]
    dose: float  # [e-/Å²] per frame
    sampling: float = 0.05  # simulation [Å]
    binning: int = 2
    slice_thickness: float = 1.0  # [Å]
    semiangle_cutoff: float = 25.0  # [mrad]
    focal_spread: float = 20.0  # [Å]
    angular_spread: float = 0.1  # [mrad]
    #: annular STEM detectors offered to the design step, (inner, outer) [mrad]; () for none
    stem_detectors: tuple[tuple[float, float], ...] = ()
    probe_semiangle: float = 25.0  # STEM probe convergence [mrad]
    source_size: float = 0.2  # STEM effective source, Gaussian sigma [Å]
    #: 4D-STEM offered to the design step: the pixelated camera's reach [mrad] (0 for none) and
    #: the probe's defocus [Å]
    pixelated_outer: float = 0.0
    pixelated_defocus: float = 0.0


#: Imaging settings per built-in library: 80 kV for MoS2 (below the S knock-on threshold), 300 kV
#: for the metal and the oxide; aberration-corrected (negative Cs) imaging. SrTiO3 gets 1e4 e-/Å²
#: per frame (radiation-hard; high-dose HRTEM): its library holds the same O vacancy at three
#: depths of one 13.8 Å column, which differ by only ~0.05 nats of KL divergence per frame at
#: 2000 e-/Å² at every candidate defocus (the depth of field, ~lambda/alpha² = 30 Å, exceeds the
#: 4 Å depth step), so telling them apart takes ~1e5-1e6 e-/Å².
#: MoS2 also offers medium- and high-angle annular dark field at 80 kV: its W_Mo substituent and
#: the pristine lattice differ by 3e-3 nats of Kullback-Leibler divergence per e-/Å² in HRTEM at
#: Scherzer defocus but 1.3e-2 in 40-200 mrad ADF, while the light-atom defects (V_S, O_S) are
#: better separated by phase contrast (``benchmarks/design_mos2.py`` measures what the choice buys).
#: Its 4D-STEM candidate (a pixelated camera to 40 mrad, the same 25 mrad probe) is defocused by
#: 50 Å: with the 0.2 Å source, whose blur of the scan removes the in-focus data's finest detail,
#: the asymptotic decision dose over the library is 581 e-/Å² with it among the candidates against
#: 604 with the in-focus probe (``inference.decision_dose_bound``; 699 against 638 alone).
LIBRARY_SETTINGS = {
    "mos2_defects": ImagingSettings(energy=80e3, c30=-1.5e5, dose=40.0, stem_detectors=((40.0, 200.0), (60.0, 200.0)),
                                    pixelated_outer=40.0, pixelated_defocus=50.0),
    "pt111_adsorbates": ImagingSettings(energy=300e3, c30=-1.5e5, dose=200.0),
    "srtio3_vacancy": ImagingSettings(energy=300e3, c30=-1.5e5, dose=1e4),
}
DEFOCUS_FACTORS = (-1.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def demo_beams(settings: ImagingSettings, pixel_sampling, dose: float | None = None, cell=None) -> list[tuple[str, dict]]:
    """The candidate beams (BEAM.json form): a defocus series around Scherzer, then the annular
    STEM detectors of ``settings`` (probe at Gaussian focus, aberrations corrected), then, given
    the ``cell`` [Å] and a ``pixelated_outer`` in ``settings``, 4D-STEM with the same probe: a
    pixelated camera to that angle, on the scan that samples the data's band limit
    ``2 alpha / lambda`` with the margin of annular STEM (:meth:`ImageModel.scan_gpts`)."""
    f0 = float(scherzer_defocus(settings.c30, settings.energy))
    sim = {"sampling": settings.sampling, "slice_thickness": settings.slice_thickness}
    out = []
    for k in DEFOCUS_FACTORS:
        out.append((
            f"defocus {k * f0:+.0f} Å ({k:g} x Scherzer)",
            {"energy": settings.energy, "dose": float(dose or settings.dose), "sampling": [float(s) for s in pixel_sampling],
             "semiangle_cutoff": settings.semiangle_cutoff, "aberrations": {"C30": settings.c30, "defocus": k * f0},
             "focal_spread": settings.focal_spread, "angular_spread": settings.angular_spread,
             "detector": {"mode": "hrtem"}, "simulation": dict(sim)},
        ))  # fmt: skip
    for inner, outer in settings.stem_detectors:
        out.append((
            f"ADF-STEM {inner:g}-{outer:g} mrad ({settings.probe_semiangle:g} mrad probe)",
            {"energy": settings.energy, "dose": float(dose or settings.dose), "sampling": [float(s) for s in pixel_sampling],
             "semiangle_cutoff": settings.probe_semiangle, "aberrations": {}, "source_size": settings.source_size,
             "detector": {"mode": "stem_annular", "inner": inner, "outer": outer}, "simulation": dict(sim)},
        ))  # fmt: skip
    if settings.pixelated_outer > 0 and cell is not None:
        from hypotest.live.model import band_limited_scan

        gpts = band_limited_scan(cell, settings.energy, settings.probe_semiangle)
        step = [float(L) / n for L, n in zip(np.asarray(cell)[:2], gpts)]
        out.append((
            f"4D-STEM to {settings.pixelated_outer:g} mrad ({settings.probe_semiangle:g} mrad probe, "
            f"defocus {settings.pixelated_defocus:g} Å)",
            {"energy": settings.energy, "dose": float(dose or settings.dose), "sampling": step,
             "semiangle_cutoff": settings.probe_semiangle, "aberrations": {"defocus": settings.pixelated_defocus},
             "source_size": settings.source_size,
             "detector": {"mode": "4dstem", "outer": settings.pixelated_outer}, "simulation": dict(sim)},
        ))  # fmt: skip
    return out


def make_demo_session(out_dir, *, seed: int = 0, library: str = "mos2_defects", frame_rate_hz: float | None = None,
                      auto_apply: bool = True, max_frames: int | None = 200, stop_on_decision: bool = True,
                      hidden: int | list[int] | None = None, schedule=(), switch_rate_hz: float = 0.0,
                      dose: float | None = None, exit_waves=None, expected_run_length: float = 200.0,
                      log: Callable[[str], None] | None = None, start_beam: int = 2,
                      scorer: str = "laplace", design: str = "allocation", pixelated: bool = False,
                      defocus_error: float = 0.0, truth_outside: str | None = None,
                      generate: dict | None = None, learn_optics: dict | None = None) -> LiveSession:  # fmt: skip
    """The embedded default: built-in ``library``, a simulated microscope hiding ``hidden`` (by
    default one hypothesis chosen by ``seed``; a list = metastable states, switching by
    ``schedule`` or ``switch_rate_hz``), frames at ``frame_rate_hz`` (None: as fast as scored).

    ``exit_waves``: precomputed exit waves of the library (e.g. from Ray workers) at the library's
    energy; computed here otherwise. ``pixelated``: also offer the library's 4D-STEM condition to
    the design step (where its settings have one; last among the candidates). Off by default: on
    MoS2 it raises the asymptotic bound but not the realised dose (``benchmarks/design_mos2.py``),
    and its simulation adds ~20 s to the warm-up. The session is not started: call ``.start()`` or
    ``.run()``.

    ``defocus_error`` [Å]: the microscope images at the commanded defocus plus this (its focus
    readout is off; the frames' beams say what was commanded). ``truth_outside``: the hidden
    structure is not in the library but made from its host by substitution (``"Cr@Mo"``: Cr on a
    Mo site, :func:`outside_truth`), so no hypothesis explains the frames: the fit check marks
    them unexplained and no decision is reached. ``generate``: new hypotheses made from the host
    while the session runs (:meth:`hypotest.live.runner.LiveSession._generate_hypotheses`),
    ``{"elements": "Se,Cr@Mo", "kinds": ["substitution", "vacancy"], "prior_mass": 0.01}``.
    ``learn_optics``: learn the HRTEM defocus and astigmatism from the frames while the session
    runs (:meth:`hypotest.live.runner.LiveSession._learn_optics`), ``{}`` for the defaults.
    """
    if library not in LIBRARY_SETTINGS:
        raise InputError(f"unknown built-in library {library!r}: expected one of {sorted(LIBRARY_SETTINGS)}")
    st = LIBRARY_SETTINGS[library]
    hyps = load_hypotheses(library)
    model = ImageModel([h.specimen for h in hyps], sampling=st.sampling, binning=st.binning,
                            slice_thickness=st.slice_thickness, exit_waves=exit_waves, energy=st.energy)  # fmt: skip
    candidates = demo_beams(st, model.pixel_sampling, dose, cell=model.cell if pixelated else None)
    rng = np.random.default_rng(seed)
    states = [int(rng.integers(len(hyps)))] if hidden is None else ([hidden] if isinstance(hidden, int) else list(hidden))
    for s in states:
        if not 0 <= s < len(hyps):
            raise InputError(f"hidden state {s} is not a hypothesis index of {library} (0..{len(hyps) - 1})")
    # The microscope has its own model of the true states (it shares the library's exit waves
    # when the truth is one of the candidates).
    scope_model, names = _scope_model(hyps, states, st, exit_waves, truth_outside)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = SimulatedMicroscopeSource(
        scope_model, names, candidates[start_beam][1], seed=seed,
        rate_hz=frame_rate_hz, max_frames=max_frames, schedule=schedule, switch_rate_hz=switch_rate_hz,
        truth_path=out / "truth.jsonl", defocus_error=defocus_error,
    )  # fmt: skip
    source_cfg = {"kind": "simulated", "seed": seed, "states": states, "rate_hz": frame_rate_hz, "max_frames": max_frames,
                  "schedule": [list(x) for x in schedule], "switch_rate_hz": switch_rate_hz,
                  "defocus_error": float(defocus_error), "truth_outside": truth_outside}  # fmt: skip
    return LiveSession(
        out, hypotheses=hyps, model=model, source=source, candidate_beams=candidates, beam=candidates[start_beam][1],
        config={"library": library, "model": model.settings, "source": source_cfg, "dose": dose, "generate": generate,
                "learn_optics": learn_optics},
        auto_apply=auto_apply, stop_on_decision=stop_on_decision, expected_run_length=expected_run_length,
        log=log, seed=seed, scorer=scorer, design=design, generate=generate, learn_optics=learn_optics,
    )  # fmt: skip


def outside_truth(hyps, spec: str):
    """A structure not in the library: the library's host (:func:`hypotest.fieldofview.analyse_library`)
    with the substitution ``spec`` (``"Cr@Mo"``, :func:`hypotest.generate.parse_elements`), the
    first symmetry-distinct site; errors when the spec makes nothing new."""
    from hypotest.fieldofview import analyse_library
    from hypotest.generate import generate_from_host, parse_elements
    from hypotest.scoring import ScoringInput

    elements = parse_elements(spec)
    if not elements:
        raise InputError(f"an out-of-library truth needs a substitution such as Cr@Mo, got {spec!r}")
    host = hyps[analyse_library(ScoringInput.from_hypotheses(hyps)).host]
    new = generate_from_host(host, elements, ("substitution",), existing_ids=[h.id for h in hyps], origin="the simulated microscope")
    if not new:
        raise InputError(f"the substitution {spec!r} of host {host.name!r} gives only structures already in the library")
    return new[0]


def _scope_model(hyps, states, st, exit_waves, truth_outside):
    """The simulated microscope's image model of its hidden states and their (id, name)."""
    if truth_outside:
        h = outside_truth(hyps, truth_outside)
        model = ImageModel([h.specimen], sampling=st.sampling, binning=st.binning, slice_thickness=st.slice_thickness,
                           energy=st.energy)  # fmt: skip
        return model, [(h.id, h.name)]
    model = ImageModel([hyps[s].specimen for s in states], sampling=st.sampling, binning=st.binning,
                       slice_thickness=st.slice_thickness,
                       exit_waves=None if exit_waves is None else [exit_waves[s] for s in states], energy=st.energy)  # fmt: skip
    return model, [(hyps[s].id, hyps[s].name) for s in states]
