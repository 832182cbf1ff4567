"""The TOML build spec of a library: hosts, generators, orientation, relaxation and priors.

Example (the built-in ``library/builtin/*.toml`` are complete, commented ones)::

    [library]
    name = "pt111_adsorbates"
    description = "O and CO on Pt(111), profile view"

    [[family]]
    name = "Pt(111) O/CO"
    host = { builder = "bulk", name = "Pt", crystalstructure = "fcc", a = 3.92 }
    slab = { miller = [1, 1, 1], min_slab_size = 6.0, min_vacuum_size = 12.0 }
    orientation = { zone_axis = [1, 0, 0], min_lengths = [9.0, 0.0], beam_repeats = 2, vacuum = 3.0 }
    relax = { calculator = "emt", fmax = 0.05, steps = 200, fix_fraction = 0.5 }
    priors = { kind = "boltzmann", temperature = 300.0, reference_molecules = ["O2", "CO"] }

    [[family.generate]]
    kind = "adsorbate"
    species = ["O", "CO"]
    sites = ["ontop", "bridge", "hollow"]

Host builders: ``bulk`` (ase.build.bulk: name, crystalstructure, a, c, cubic), ``mx2``
(ase.build.mx2: formula, kind, a, thickness, vacuum), ``cell`` (lattice, species, frac_coords),
``file`` (path, index: one structure read by :func:`library.ingest.read_structures`).
Generator kinds: vacancy (elements), column_vacancy (element, count), substitution (mapping),
antisite, interstitial (species, min_distance), adsorbate (species, sites, distance).
``sources`` (a list of files/globs) adds ingested structures to a family; paths are relative to
the spec file. ``orientation = { mode = "as_is" }`` keeps structures already in the microscope
frame.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from forward import InputError
from library.priors import PriorConfig
from library.relax import RelaxConfig

__all__ = ["OrientationConfig", "FamilySpec", "LibrarySpec", "load_spec", "parse_spec"]

_GENERATORS = {
    "vacancy": {"elements"},
    "column_vacancy": {"element", "count", "tol"},
    "substitution": {"mapping"},
    "antisite": set(),
    "interstitial": {"species", "min_distance", "merge"},
    "adsorbate": {"species", "sites", "distance"},
}
_REQUIRED = {"column_vacancy": {"element"}, "substitution": {"mapping"}, "interstitial": {"species"}}
_HOSTS = {
    "bulk": {"name", "crystalstructure", "a", "c", "cubic"},
    "mx2": {"formula", "kind", "a", "thickness", "vacuum"},
    "cell": {"name", "lattice", "species", "frac_coords"},
    "file": {"path", "index", "format"},
}


@dataclasses.dataclass(frozen=True)
class OrientationConfig:
    """How a family is oriented (see :mod:`library.orient`).

    Attributes:
        mode: "zone_axis" (orient the host) or "as_is" (already orthogonal, beam along z).
        zone_axis: beam direction [uvw] in the host lattice.
        min_lengths: smallest cell lengths along x and y [Å].
        beam_repeats: repetitions of the zone-axis vector along the beam.
        vacuum: vacuum added below and above the specimen along the beam [Å].
        min_vacuum: for "as_is", least vacuum required along z [Å].
    """

    mode: str = "zone_axis"
    zone_axis: tuple[int, int, int] = (0, 0, 1)
    min_lengths: tuple[float, float] = (0.0, 0.0)
    beam_repeats: int = 1
    vacuum: float = 3.0
    min_vacuum: float = 2.5


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One family of a library spec (see module docstring); ``params`` pairs are sorted."""

    name: str
    host: tuple[tuple[str, object], ...] = ()
    slab: tuple[tuple[str, object], ...] = ()
    supercell: tuple[int, int, int] = (1, 1, 1)
    orientation: OrientationConfig = OrientationConfig()
    generators: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    sources: tuple[str, ...] = ()
    include_host: bool = True
    relax: RelaxConfig | None = None
    priors: PriorConfig = PriorConfig()
    reference_molecules: tuple[str, ...] = ()
    delta_mu: tuple[tuple[str, float], ...] = ()
    dw_sigmas: tuple[tuple[str, float], ...] = ()
    allow_mixed_cells: bool = False


@dataclasses.dataclass(frozen=True)
class LibrarySpec:
    """A parsed library spec."""

    name: str
    description: str
    families: tuple[FamilySpec, ...]
    base_dir: str = "."
    source: str = ""


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _keys(d: dict, allowed: set, where: str, src: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise InputError(f"{src}: unknown key(s) {extra} in {where}; expected some of {sorted(allowed)}")


def _table(d, where: str, src: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise InputError(f"{src}: {where} must be a table, got {type(d).__name__}")
    return d


def _dataclass(cls, d: dict, where: str, src: str, **extra):
    fields = {f.name for f in dataclasses.fields(cls)}
    _keys(d, fields | set(extra), where, src)
    kw = {k: v for k, v in d.items() if k in fields}
    for k, v in list(kw.items()):
        if isinstance(v, list):
            kw[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        elif isinstance(v, dict):
            kw[k] = tuple(sorted((str(a), float(b)) for a, b in v.items()))
    try:
        return cls(**kw)
    except TypeError as exc:
        raise InputError(f"{src}: bad {where}: {exc}") from None


def _family(d: dict, src: str, k: int) -> FamilySpec:
    where = f"family #{k}"
    allowed = {
        "name", "description", "host", "slab", "supercell", "orientation", "generate", "sources",
        "include_host", "relax", "priors", "dw_sigmas", "allow_mixed_cells",
    }  # fmt: skip
    _keys(d, allowed, where, src)
    name = d.get("name")
    if not name:
        raise InputError(f"{src}: {where} needs a name")
    where = f"family {name!r}"
    host = _table(d.get("host"), f"{where} host", src)
    if host:
        b = host.get("builder")
        if b not in _HOSTS:
            raise InputError(f"{src}: {where} host builder must be one of {sorted(_HOSTS)}, got {b!r}")
        _keys(host, _HOSTS[b] | {"builder"}, f"{where} host", src)
        need = {"bulk": {"name"}, "cell": {"lattice", "species", "frac_coords"}, "file": {"path"}}.get(b, set())
        if need - set(host):
            raise InputError(f"{src}: {where} host ({b}) needs {sorted(need - set(host))}")
    sources = d.get("sources", [])
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not host and not sources:
        raise InputError(f"{src}: {where} needs a host table or sources (files to ingest)")
    slab = _table(d.get("slab"), f"{where} slab", src)
    _keys(slab, {"miller", "min_slab_size", "min_vacuum_size", "termination", "all_terminations"}, f"{where} slab", src)
    gens = []
    for j, g in enumerate(d.get("generate", [])):
        g = _table(g, f"{where} generate #{j}", src)
        kind = g.get("kind")
        if kind not in _GENERATORS:
            raise InputError(f"{src}: {where} generate #{j}: kind must be one of {sorted(_GENERATORS)}, got {kind!r}")
        _keys(g, _GENERATORS[kind] | {"kind"}, f"{where} generate #{j} ({kind})", src)
        missing = sorted(_REQUIRED.get(kind, set()) - set(g))
        if missing:
            raise InputError(f"{src}: {where} generate #{j} ({kind}) needs {missing}")
        gens.append((kind, _freeze({k: v for k, v in g.items() if k != "kind"})))
    ori = _dataclass(OrientationConfig, _table(d.get("orientation"), f"{where} orientation", src), f"{where} orientation", src)
    if ori.mode not in ("zone_axis", "as_is"):
        raise InputError(f"{src}: {where} orientation mode must be 'zone_axis' or 'as_is', got {ori.mode!r}")
    relax = None
    if d.get("relax") is not None:
        relax = _dataclass(RelaxConfig, _table(d["relax"], f"{where} relax", src), f"{where} relax", src)
    pri = dict(_table(d.get("priors"), f"{where} priors", src))
    refs = tuple(pri.pop("reference_molecules", ()))
    dmu = tuple(sorted((str(a), float(b)) for a, b in dict(pri.pop("delta_mu", {})).items()))
    priors = _dataclass(PriorConfig, pri, f"{where} priors", src)
    sc = tuple(int(x) for x in d.get("supercell", (1, 1, 1)))
    dw = tuple(sorted((str(a), float(b)) for a, b in _table(d.get("dw_sigmas"), f"{where} dw_sigmas", src).items()))
    return FamilySpec(
        name=str(name),
        host=_freeze(host),
        slab=_freeze(slab),
        supercell=sc,
        orientation=ori,
        generators=tuple(gens),
        sources=tuple(str(s) for s in sources),
        include_host=bool(d.get("include_host", True)),
        relax=relax,
        priors=priors,
        reference_molecules=refs,
        delta_mu=dmu,
        dw_sigmas=dw,
        allow_mixed_cells=bool(d.get("allow_mixed_cells", False)),
    )


def parse_spec(data: dict, *, source: str = "<spec>", base_dir: str = ".") -> LibrarySpec:
    """A :class:`LibrarySpec` from the parsed TOML ``data``."""
    _keys(data, {"library", "family"}, "the spec", source)
    lib = _table(data.get("library"), "[library]", source)
    _keys(lib, {"name", "description"}, "[library]", source)
    fams = data.get("family")
    if not fams:
        raise InputError(f"{source}: the spec has no [[family]] tables; add at least one")
    families = tuple(_family(_table(f, f"family #{k}", source), source, k) for k, f in enumerate(fams))
    names = [f.name for f in families]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{source}: family names must be unique, {dup} repeat")
    return LibrarySpec(
        name=str(lib.get("name", Path(source).stem)),
        description=str(lib.get("description", "")),
        families=families,
        base_dir=str(base_dir),
        source=source,
    )


def load_spec(path: str | Path) -> LibrarySpec:
    """Read and parse a TOML library spec."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such spec file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML ({exc})") from None
    return parse_spec(data, source=str(p), base_dir=str(p.parent))
