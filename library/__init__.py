"""library: candidate structures. Ingest DFT outputs, generate candidates, relax, priors, the
library file format and the built-in example libraries. No JAX transforms.

The names below load on first use (PEP 562 module ``__getattr__``), so ``import library`` costs
nothing and reading specs, structure files or a library file's index never imports JAX; building
:class:`forward.Specimen` objects (library entries) does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forward._lazy import lazy_exports

#: Public name -> the submodule that defines it.
_SOURCES = {
    "library.build": ("add_to_library", "build_family", "build_library", "make_entries", "oriented"),
    "library.candidate": ("Candidate", "check_atoms", "make_candidate"),
    "library.defects": ("antisites", "column_substitutions", "column_vacancies", "interstitials", "substitutions", "vacancies"),
    "library.entry": ("LibraryEntry", "make_entry"),
    "library.export": ("entry_to_atoms", "export_library"),
    "library.format": ("SCHEMA_VERSION", "FamilyInfo", "LibraryFile", "open_library", "read_entries", "write_library"),
    "library.hosts": ("bulk_host", "cell_host", "mx2_host", "supercell"),
    "library.ingest": ("read_structures",),
    "library.orient": (
        "Orientation", "View", "apply_orientation", "as_is_view", "find_orientation", "identity_orientation",
        "make_view", "to_specimen",
    ),
    "library.priors": ("K_B", "PriorConfig", "boltzmann_weights", "prior_weights"),
    "library.provenance": ("ID_DECIMALS", "Provenance", "content_id"),
    "library.relax": ("RelaxConfig", "gas_chemical_potentials", "get_calculator", "relax"),
    "library.spec": ("FamilySpec", "LibrarySpec", "OrientationConfig", "load_spec", "parse_spec"),
    "library.surfaces": ("ADSORBATES", "SITE_KINDS", "adsorbates", "slabs"),
}  # fmt: skip
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


if TYPE_CHECKING:  # what static analysis and IDEs see: the eager imports
    from library.build import add_to_library, build_family, build_library, make_entries, oriented  # noqa: F401
    from library.candidate import Candidate, check_atoms, make_candidate  # noqa: F401
    from library.defects import antisites, column_substitutions, column_vacancies, interstitials, substitutions, vacancies  # noqa: F401
    from library.entry import LibraryEntry, make_entry  # noqa: F401
    from library.export import entry_to_atoms, export_library  # noqa: F401
    from library.format import (  # noqa: F401
        SCHEMA_VERSION,
        FamilyInfo,
        LibraryFile,
        open_library,
        read_entries,
        write_library,
    )
    from library.hosts import bulk_host, cell_host, mx2_host, supercell  # noqa: F401
    from library.ingest import read_structures  # noqa: F401
    from library.orient import (  # noqa: F401
        Orientation,
        View,
        apply_orientation,
        as_is_view,
        find_orientation,
        identity_orientation,
        make_view,
        to_specimen,
    )
    from library.priors import K_B, PriorConfig, boltzmann_weights, prior_weights  # noqa: F401
    from library.provenance import ID_DECIMALS, Provenance, content_id  # noqa: F401
    from library.relax import RelaxConfig, gas_chemical_potentials, get_calculator, relax  # noqa: F401
    from library.spec import FamilySpec, LibrarySpec, OrientationConfig, load_spec, parse_spec  # noqa: F401
    from library.surfaces import ADSORBATES, SITE_KINDS, adsorbates, slabs  # noqa: F401
