"""forward: physics only, pure JAX. Structures and beam conditions in, frames out.

No Ray, no files, no globals. Arrays on a :class:`Grid` are indexed ``[x, y]``.

The names below load on first use (PEP 562 module ``__getattr__``): ``from forward import
InputError`` imports only :mod:`forward.errors` (no JAX), so :mod:`library` and the frame-stream
codec load without JAX; ``from forward import make_beam`` imports :mod:`forward.beam` and JAX as
before. ``forward.<submodule>`` (``forward.hrtem``, ...) is imported on attribute access too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forward._lazy import lazy_exports

#: Public name -> the submodule that defines it.
_SOURCES = {
    "forward._pytree": ("pytree_dataclass", "replace", "static_field"),
    "forward.beam": (
        "ABERRATION_ALIASES", "ABERRATION_SYMBOLS", "DETECTOR_MODES", "ENERGY_RANGE", "Aberrations",
        "BeamCondition", "Detector", "make_aberrations", "make_beam", "make_detector",
    ),
    "forward.constants": ("interaction_parameter", "scherzer_defocus", "wavelength"),
    "forward.detectors": ("CBEDGeometry", "cbed_geometry"),
    "forward.elements": ("atomic_number", "symbol"),
    "forward.errors": ("InputError",),
    "forward.grid": ("Grid", "fft_friendly_size", "make_grid"),
    "forward.hrtem": ("HRTEMSimulator", "ctf", "make_hrtem_simulator", "make_optics_image_fn"),
    "forward.noise": ("expected_electrons", "pixel_area", "sample_frame"),
    "forward.phonons": ("displace_atoms", "make_frozen_phonon_simulator"),
    "forward.potentials": ("PROJECTIONS", "make_potential_fn"),
    "forward.prism": ("SMatrix", "make_prism"),
    "forward.propagation": (
        "fresnel_propagator", "multislice", "multislice_potential", "multislice_to_depth", "transmission_function",
    ),
    "forward.reciprocal": ("antialias_mask",),
    "forward.specimen": ("DEFAULT_MIN_DISTANCE", "Specimen", "add_exit_layers", "beam_period", "make_specimen", "stack_specimens"),
    "forward.stem": ("Scan", "make_scan", "make_stem_simulator"),
    "forward.transfer": ("aberration_phase", "aperture"),
    "forward.waves": ("plane_wave",),
}  # fmt: skip
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


if TYPE_CHECKING:  # what static analysis and IDEs see: the eager imports
    from forward._pytree import pytree_dataclass, replace, static_field  # noqa: F401
    from forward.beam import (  # noqa: F401
        ABERRATION_ALIASES,
        ABERRATION_SYMBOLS,
        DETECTOR_MODES,
        ENERGY_RANGE,
        Aberrations,
        BeamCondition,
        Detector,
        make_aberrations,
        make_beam,
        make_detector,
    )
    from forward.constants import interaction_parameter, scherzer_defocus, wavelength  # noqa: F401
    from forward.detectors import CBEDGeometry, cbed_geometry  # noqa: F401
    from forward.elements import atomic_number, symbol  # noqa: F401
    from forward.errors import InputError  # noqa: F401
    from forward.grid import Grid, fft_friendly_size, make_grid  # noqa: F401
    from forward.hrtem import HRTEMSimulator, ctf, make_hrtem_simulator, make_optics_image_fn  # noqa: F401
    from forward.noise import expected_electrons, pixel_area, sample_frame  # noqa: F401
    from forward.phonons import displace_atoms, make_frozen_phonon_simulator  # noqa: F401
    from forward.potentials import PROJECTIONS, make_potential_fn  # noqa: F401
    from forward.prism import SMatrix, make_prism  # noqa: F401
    from forward.propagation import (  # noqa: F401
        fresnel_propagator,
        multislice,
        multislice_potential,
        multislice_to_depth,
        transmission_function,
    )
    from forward.reciprocal import antialias_mask  # noqa: F401
    from forward.specimen import DEFAULT_MIN_DISTANCE, Specimen, add_exit_layers, beam_period, make_specimen, stack_specimens  # noqa: F401
    from forward.stem import Scan, make_scan, make_stem_simulator  # noqa: F401
    from forward.transfer import aberration_phase, aperture  # noqa: F401
    from forward.waves import plane_wave  # noqa: F401
