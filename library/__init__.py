"""library: candidate structures. Ingest DFT outputs, generate candidates, relax, priors, the
library file format and the built-in example libraries. No JAX transforms."""

from library.build import add_to_library, build_family, build_library, make_entries, oriented
from library.candidate import Candidate, check_atoms, make_candidate
from library.defects import antisites, column_vacancies, interstitials, substitutions, vacancies
from library.entry import LibraryEntry, make_entry
from library.export import entry_to_atoms, export_library
from library.format import SCHEMA_VERSION, FamilyInfo, LibraryFile, open_library, read_entries, write_library
from library.hosts import bulk_host, cell_host, mx2_host, supercell
from library.ingest import read_structures
from library.orient import (
    Orientation,
    View,
    apply_orientation,
    as_is_view,
    find_orientation,
    identity_orientation,
    make_view,
    to_specimen,
)
from library.priors import K_B, PriorConfig, boltzmann_weights, prior_weights
from library.provenance import ID_DECIMALS, Provenance, content_id
from library.relax import RelaxConfig, gas_chemical_potentials, get_calculator, relax
from library.spec import FamilySpec, LibrarySpec, OrientationConfig, load_spec, parse_spec
from library.surfaces import ADSORBATES, SITE_KINDS, adsorbates, slabs

__all__ = [
    "ADSORBATES",
    "ID_DECIMALS",
    "K_B",
    "SCHEMA_VERSION",
    "SITE_KINDS",
    "Candidate",
    "FamilyInfo",
    "FamilySpec",
    "LibraryEntry",
    "LibraryFile",
    "LibrarySpec",
    "Orientation",
    "OrientationConfig",
    "PriorConfig",
    "Provenance",
    "RelaxConfig",
    "View",
    "add_to_library",
    "adsorbates",
    "antisites",
    "apply_orientation",
    "as_is_view",
    "boltzmann_weights",
    "build_family",
    "build_library",
    "bulk_host",
    "cell_host",
    "check_atoms",
    "column_vacancies",
    "content_id",
    "entry_to_atoms",
    "export_library",
    "find_orientation",
    "gas_chemical_potentials",
    "get_calculator",
    "identity_orientation",
    "interstitials",
    "load_spec",
    "make_candidate",
    "make_entries",
    "make_entry",
    "make_view",
    "mx2_host",
    "open_library",
    "oriented",
    "parse_spec",
    "prior_weights",
    "read_entries",
    "read_structures",
    "relax",
    "slabs",
    "substitutions",
    "supercell",
    "to_specimen",
    "vacancies",
    "write_library",
]
