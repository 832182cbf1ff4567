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
Generator kinds: vacancy (elements), column_vacancy (element, count), column_substitution (element, by,
count), substitution (mapping),
antisite, interstitial (species, min_distance), adsorbate (species, sites, distance).
``sources`` (a list of files/globs) adds ingested structures to a family; paths are relative to
the spec file. ``orientation = { mode = "as_is" }`` keeps structures already in the microscope
frame.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from forward import InputError
from library.priors import PriorConfig
from library.relax import RelaxConfig

__all__ = ["OrientationConfig", "FamilySpec", "LibrarySpec", "load_spec", "parse_spec"]

_GENERATORS = {
    "vacancy": {"elements"},
    "column_vacancy": {"element", "count", "tol"},
    "column_substitution": {"element", "by", "count", "tol"},
    "substitution": {"mapping"},
    "antisite": set(),
    "interstitial": {"species", "min_distance", "merge"},
    "adsorbate": {"species", "sites", "distance"},
}
_REQUIRED = {"column_vacancy": {"element"}, "column_substitution": {"element", "by"}, "substitution": {"mapping"},
             "interstitial": {"species"}}  # fmt: skip
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


#: Numbers of the spec and what they must be: "length" > 0, "extent" >= 0 (vacuum, least sizes),
#: "count" a whole number >= 1, "index" a whole number >= 0, "fraction" in [0, 1), "temperature" > 0.
_HOST_NUMBERS = {
    "bulk": {"a": ("length", "Å"), "c": ("length", "Å")},
    "mx2": {"a": ("length", "Å"), "thickness": ("length", "Å"), "vacuum": ("extent", "Å")},
    "file": {"index": ("index", "")},
}
_SLAB_NUMBERS = {"min_slab_size": ("length", "Å"), "min_vacuum_size": ("extent", "Å")}
_GENERATOR_NUMBERS = {
    "count": ("count", ""), "tol": ("length", "Å"), "min_distance": ("length", "Å"), "merge": ("extent", "Å"),
    "distance": ("length", "Å"),
}  # fmt: skip
_ORIENTATION_NUMBERS = {"beam_repeats": ("count", ""), "vacuum": ("extent", "Å"), "min_vacuum": ("extent", "Å")}
_RELAX_NUMBERS = {"fmax": ("length", "eV/Å"), "steps": ("index", ""), "fix_fraction": ("fraction", "")}
_KINDS = {
    "length": "a positive finite number", "extent": "a finite number >= 0", "count": "a whole number >= 1",
    "index": "a whole number >= 0", "fraction": "a number in [0, 1)", "temperature": "a positive finite number",
    "integer": "a whole number",
}  # fmt: skip


def _number(v, path: str, kind: str, unit: str, src: str) -> float:
    """``v`` checked as ``kind`` (see :data:`_KINDS`); errors name the file and the field path."""
    x = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    ok = math.isfinite(x) and {
        "length": x > 0, "extent": x >= 0, "count": x >= 1 and x == int(x), "index": x >= 0 and x == int(x),
        "fraction": 0 <= x < 1, "temperature": x > 0, "integer": x == int(x),
    }[kind]  # fmt: skip
    if not ok:
        u = f" [{unit}]" if unit else ""
        raise InputError(f"{src}: {path} must be {_KINDS[kind]}{u}, got {v!r}")
    return x


def _numbers(d: dict, table: dict, where: str, src: str) -> None:
    for k, (kind, unit) in table.items():
        if k in d:
            _number(d[k], f"{where}.{k}", kind, unit, src)


def _list_of(v, n: int | None, path: str, kind: str, unit: str, src: str, shape: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        raise InputError(f"{src}: {path} must be {shape}, got {v!r}")
    return [_number(x, f"{path}[{i}]", kind, unit, src) for i, x in enumerate(v)]


def _check_lattice(lat, path: str, src: str) -> None:
    """3 positive lengths [Å], or a 3x3 matrix of finite numbers whose rows have positive length."""
    if isinstance(lat, (list, tuple)) and len(lat) == 3 and all(isinstance(r, (list, tuple)) for r in lat):
        for i, row in enumerate(lat):
            if len(row) != 3:
                raise InputError(f"{src}: {path}[{i}] must be a lattice vector of 3 numbers [Å], got {row!r}")
            for j, x in enumerate(row):
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
                    raise InputError(f"{src}: {path}[{i}][{j}] must be a finite number [Å], got {x!r}")
            if math.hypot(*(float(x) for x in row)) <= 0:
                raise InputError(f"{src}: {path}[{i}] is a lattice vector of length 0; each must have a positive length [Å]")
        return
    _list_of(lat, 3, path, "length", "Å", src, "3 positive lengths [Å] or a 3x3 matrix of row vectors [Å]")


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
        _numbers(host, _HOST_NUMBERS.get(b, {}), f"{where} host", src)
        if b == "cell":
            _check_lattice(host["lattice"], f"{where} host.lattice", src)
        if "cubic" in host and not isinstance(host["cubic"], bool):
            raise InputError(f"{src}: {where} host.cubic must be true or false, got {host['cubic']!r}")
    sources = d.get("sources", [])
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not host and not sources:
        raise InputError(f"{src}: {where} needs a host table or sources (files to ingest)")
    slab = _table(d.get("slab"), f"{where} slab", src)
    _keys(slab, {"miller", "min_slab_size", "min_vacuum_size", "termination", "all_terminations"}, f"{where} slab", src)
    _numbers(slab, _SLAB_NUMBERS, f"{where} slab", src)
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
        _numbers(g, _GENERATOR_NUMBERS, f"{where} generate #{j} ({kind})", src)
        gens.append((kind, _freeze({k: v for k, v in g.items() if k != "kind"})))
    ori_d = _table(d.get("orientation"), f"{where} orientation", src)
    _numbers(ori_d, _ORIENTATION_NUMBERS, f"{where} orientation", src)
    if "min_lengths" in ori_d:
        _list_of(ori_d["min_lengths"], 2, f"{where} orientation.min_lengths", "extent", "Å", src, "[x, y] [Å]")
    if "zone_axis" in ori_d:
        za = _list_of(ori_d["zone_axis"], 3, f"{where} orientation.zone_axis", "integer", "", src, "[u, v, w]")
        if not any(za):
            raise InputError(f"{src}: {where} orientation.zone_axis must not be [0, 0, 0]")
    ori = _dataclass(OrientationConfig, ori_d, f"{where} orientation", src)
    if ori.mode not in ("zone_axis", "as_is"):
        raise InputError(f"{src}: {where} orientation mode must be 'zone_axis' or 'as_is', got {ori.mode!r}")
    relax = None
    if d.get("relax") is not None:
        relax_d = _table(d["relax"], f"{where} relax", src)
        _numbers(relax_d, _RELAX_NUMBERS, f"{where} relax", src)
        relax = _dataclass(RelaxConfig, relax_d, f"{where} relax", src)
    pri = dict(_table(d.get("priors"), f"{where} priors", src))
    refs = tuple(pri.pop("reference_molecules", ()))
    dmu = tuple(sorted((str(a), float(b)) for a, b in dict(pri.pop("delta_mu", {})).items()))
    if "temperature" in pri:
        _number(pri["temperature"], f"{where} priors.temperature", "temperature", "K", src)
    priors = _dataclass(PriorConfig, pri, f"{where} priors", src)
    sc_v = d.get("supercell", [1, 1, 1])
    sc = tuple(int(x) for x in _list_of(sc_v, 3, f"{where} supercell", "count", "", src, "[n1, n2, n3]"))
    dw_d = _table(d.get("dw_sigmas"), f"{where} dw_sigmas", src)
    dw = tuple(sorted((str(a), _number(b, f"{where} dw_sigmas.{a}", "extent", "Å", src)) for a, b in dw_d.items()))
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
