"""forward: physics only, pure JAX. Structures and beam conditions in, frames out.

No Ray, no files, no globals. Arrays on a :class:`Grid` are indexed ``[x, y]``.
"""

from forward._pytree import pytree_dataclass, replace, static_field
from forward.beam import (
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
from forward.constants import interaction_parameter, scherzer_defocus, wavelength
from forward.detectors import CBEDGeometry, cbed_geometry
from forward.elements import atomic_number, symbol
from forward.errors import InputError
from forward.grid import Grid, fft_friendly_size, make_grid
from forward.hrtem import HRTEMSimulator, ctf, make_hrtem_simulator
from forward.noise import expected_electrons, pixel_area, sample_frame
from forward.phonons import displace_atoms, make_frozen_phonon_simulator
from forward.potentials import PROJECTIONS, make_potential_fn
from forward.prism import SMatrix, make_prism
from forward.propagation import (
    fresnel_propagator,
    multislice,
    multislice_potential,
    multislice_to_depth,
    transmission_function,
)
from forward.reciprocal import antialias_mask
from forward.specimen import DEFAULT_MIN_DISTANCE, Specimen, make_specimen, stack_specimens
from forward.stem import Scan, make_scan, make_stem_simulator
from forward.transfer import aberration_phase, aperture
from forward.waves import plane_wave

__all__ = [
    "ABERRATION_ALIASES",
    "ABERRATION_SYMBOLS",
    "Aberrations",
    "BeamCondition",
    "CBEDGeometry",
    "DEFAULT_MIN_DISTANCE",
    "DETECTOR_MODES",
    "Detector",
    "ENERGY_RANGE",
    "Grid",
    "HRTEMSimulator",
    "InputError",
    "PROJECTIONS",
    "SMatrix",
    "Scan",
    "Specimen",
    "aberration_phase",
    "antialias_mask",
    "aperture",
    "atomic_number",
    "cbed_geometry",
    "ctf",
    "displace_atoms",
    "expected_electrons",
    "fft_friendly_size",
    "fresnel_propagator",
    "interaction_parameter",
    "make_aberrations",
    "make_beam",
    "make_detector",
    "make_frozen_phonon_simulator",
    "make_grid",
    "make_hrtem_simulator",
    "make_potential_fn",
    "make_prism",
    "make_scan",
    "make_specimen",
    "make_stem_simulator",
    "multislice",
    "multislice_potential",
    "multislice_to_depth",
    "pixel_area",
    "plane_wave",
    "pytree_dataclass",
    "replace",
    "sample_frame",
    "scherzer_defocus",
    "stack_specimens",
    "static_field",
    "symbol",
    "transmission_function",
    "wavelength",
]
