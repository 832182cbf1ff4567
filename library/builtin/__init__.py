"""Built-in example libraries, each a real question (see the comments in each TOML spec):

- ``mos2_defects``: MoS2 monolayer point defects in plan view (pristine, V_S, V_S2, V_Mo, Mo_S,
  S_Mo, O_S, W_Mo).
- ``mos2_se``: Se-implanted MoS2 in plan view (pristine, V_S, V_S2, Se_S, Se2_S2, V_Mo, S_Mo): the
  library of the README's real-frame worked example.
- ``pt111_adsorbates``: Pt(111) in surface-profile view, clean and with O or CO at top, bridge
  and hollow sites, EMT-relaxed, Boltzmann priors at 300 K.
- ``srtio3_vacancy``: SrTiO3 [001] with an oxygen vacancy in each distinct projected column and
  depth.

The specs ship as ``<name>.toml`` with their prebuilt libraries ``<name>.h5`` beside them
(rebuild with ``hypotest library build library/builtin/<name>.toml --out <name>.h5``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from forward import InputError

if TYPE_CHECKING:
    from library.entry import LibraryEntry

__all__ = ["NAMES", "names", "spec_path", "library_path", "load"]

_HERE = Path(__file__).parent

#: Names of the built-in libraries.
NAMES = ("mos2_defects", "mos2_se", "pt111_adsorbates", "srtio3_vacancy")


def names() -> tuple[str, ...]:
    """Names of the built-in libraries."""
    return NAMES


def _check(name: str) -> str:
    if name not in NAMES:
        raise InputError(f"no built-in library {name!r}; the built-in libraries are {list(NAMES)}")
    return name


def spec_path(name: str) -> Path:
    """The TOML spec of built-in library ``name``."""
    return _HERE / f"{_check(name)}.toml"


def library_path(name: str) -> Path:
    """The prebuilt library file of built-in library ``name`` (may be absent in a source tree)."""
    return _HERE / f"{_check(name)}.h5"


def load(name: str, family: str | None = None) -> list[LibraryEntry]:
    """Every entry of built-in library ``name`` (or of one ``family``), read from the shipped
    file, or built in memory from the spec when the file is absent."""
    p = library_path(name)
    if p.is_file():
        from library.format import open_library

        with open_library(p) as lib:
            return lib.family(family) if family is not None else lib.entries()
    from library.build import build_family
    from library.spec import load_spec

    spec = load_spec(spec_path(name))
    out: list[LibraryEntry] = []
    for fam in spec.families:
        if family is None or fam.name == family:
            out.extend(build_family(fam, base_dir=spec.base_dir)[0])
    if family is not None and not out:
        raise InputError(f"built-in library {name!r} has no family {family!r}")
    return out
