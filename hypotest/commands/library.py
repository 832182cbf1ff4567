"""``hypotest library``: build, list, show, add to and export hypothesis libraries.

    hypotest library build SPEC.toml --out LIB.h5 [--force]
    hypotest library list LIB.h5 [--family NAME]
    hypotest library show LIB.h5 ID
    hypotest library add LIB.h5 FILES... --family NAME [--zone-axis U V W ...]
    hypotest library export LIB.h5 --format extxyz|cif --out DIR [--family NAME]

Errors are :class:`forward.InputError`; ``hypotest``'s main prints them as
``hypotest library: error: ...`` and exits with status 2. Output paths are checked before any
work (:mod:`hypotest.outputs`): ``build`` does not replace an existing library without
``--force``; a directory, a path under a file or an unwritable place is refused; library files
are written under a temporary name and renamed, exported files collected in a temporary
directory and moved into ``--out`` when all are written.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from forward import InputError

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "library",
        help="build, list, show, add to and export hypothesis libraries",
        description="Candidate-structure libraries: build from a TOML spec, inspect, add DFT files, export.",
    )
    sub = p.add_subparsers(dest="library_command", metavar="SUBCOMMAND")
    p.set_defaults(func=_no_subcommand, _parser=p)

    b = sub.add_parser("build", help="build a library from a TOML spec")
    b.add_argument("spec", help="TOML spec (see library/builtin/*.toml)")
    b.add_argument("--out", required=True, help="library file to write (HDF5)")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    ls = sub.add_parser("list", help="list the families and hypotheses of a library")
    ls.add_argument("library")
    ls.add_argument("--family", help="only this family")
    ls.set_defaults(func=_list)

    sh = sub.add_parser("show", help="show one hypothesis with its provenance")
    sh.add_argument("library")
    sh.add_argument("id")
    sh.set_defaults(func=_show)

    ad = sub.add_parser("add", help="ingest structure files (CIF, POSCAR, vasprun.xml, QE, extxyz, ASE db, JSON)")
    ad.add_argument("library", help="library file (created if absent)")
    ad.add_argument("files", nargs="+", help="files, directories or glob patterns")
    ad.add_argument("--family", required=True, help="family to add them to")
    ad.add_argument("--zone-axis", nargs=3, type=int, metavar=("U", "V", "W"), help="orient along [uvw] (default: as given)")
    ad.add_argument("--min-lengths", nargs=2, type=float, default=(0.0, 0.0), metavar=("X", "Y"), help="least cell size [Å]")
    ad.add_argument("--beam-repeats", type=int, default=1, help="repetitions along the beam")
    ad.add_argument("--vacuum", type=float, default=3.0, help="vacuum along the beam [Å]")
    ad.add_argument("--priors", choices=("uniform", "boltzmann"), default="uniform")
    ad.add_argument("--temperature", type=float, default=300.0, help="for Boltzmann priors [K]")
    ad.add_argument("--mu", action="append", default=[], metavar="EL=EV", help="chemical potential [eV/atom], repeatable")
    ad.add_argument("--allow-mixed-cells", action="store_true", help="accept (and flag) cells that differ in the family")
    ad.set_defaults(func=_add)

    ex = sub.add_parser("export", help="export to extxyz (one file per family) or CIF (one per hypothesis)")
    ex.add_argument("library")
    ex.add_argument("--format", required=True, choices=("extxyz", "cif"))
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--family", help="only this family")
    ex.set_defaults(func=_export)


def _no_subcommand(args) -> int:
    args._parser.print_help()
    return 2


@contextlib.contextmanager
def _writing(path: str, what: str):
    """An OSError while writing ``path`` (after the up-front check: a full disk, a race) is an InputError."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def _build(args) -> int:
    from hypotest.outputs import check_output_file
    from library.build import build_library

    check_output_file(args.out, force=args.force, example="library.h5")

    def report(name: str, n: int) -> None:
        print(f"family {name!r}: {n} hypotheses", file=sys.stderr)

    with _writing(args.out, "--out"):
        out = build_library(args.spec, args.out, progress=not args.no_progress, on_family=report)
    print(f"wrote {out}")
    return 0


def _list(args) -> int:
    from library.format import open_library

    with open_library(args.library) as lib:
        meta = lib.metadata
        print(f"{args.library}: {meta.get('name', '')} - {len(lib)} hypotheses in {len(lib.families)} families")
        fams = [args.family] if args.family else lib.families
        for f in fams:
            info = lib.family_info(f)
            cell_note = "shared cell" if info.shared_cell else "CELLS DIFFER (images not comparable pixel for pixel)"
            print(f"\nfamily {f!r}: {info.size} hypotheses, {cell_note}")
            print(f"  priors: {info.prior_explanation}")
            print(f"  {'id':<18} {'prior':>9} {'atoms':>5} {'energy/eV':>12}  name")
            for e in lib.family(f):
                en = "" if e.provenance.energy is None else f"{e.provenance.energy:.4f}"
                print(f"  {e.id:<18} {float(e.prior):9.3g} {e.specimen.n_atoms:5d} {en:>12}  {e.name}")
    return 0


def _show(args) -> int:
    from forward import symbol
    from library.format import open_library

    with open_library(args.library) as lib:
        e = lib.get(args.id)
        info = lib.family_info(e.family)
    zs, counts = np.unique(np.asarray(e.specimen.numbers), return_counts=True)
    comp = " ".join(f"{symbol(int(z))}{int(c)}" for z, c in zip(zs, counts))
    p = e.provenance
    lines = [
        f"id:          {e.id}",
        f"name:        {e.name}",
        f"family:      {e.family} ({info.size} hypotheses, {'shared cell' if info.shared_cell else 'cells differ'})",
        f"tags:        {', '.join(e.tags)}",
        f"prior:       {float(e.prior):.6g}  ({info.prior_explanation})",
        f"atoms:       {e.specimen.n_atoms} ({comp})",
        f"cell [Å]:    {np.round(np.asarray(e.specimen.cell), 4).tolist()} (beam along z)",
        f"source:      {p.source}",
        f"sha256:      {p.source_sha256}",
        f"code:        {p.code}",
        f"functional:  {p.functional}",
        f"supercell:   {list(p.supercell)}",
        f"charge:      {p.charge}",
        f"energy [eV]: {p.energy}",
    ]
    lines += [f"note:        {k} = {v}" for k, v in p.notes]
    lines += [f"relaxation:  {k} = {v}" for k, v in p.relaxation]
    print("\n".join(lines))
    return 0


def _mu(items) -> tuple[tuple[str, float], ...]:
    out = []
    for it in items:
        el, sep, val = str(it).partition("=")
        try:
            out.append((el.strip(), float(val)))
        except ValueError:
            sep = ""
        if not sep or not el.strip():
            raise InputError(f"--mu expects ELEMENT=VALUE in eV/atom (e.g. O=-4.9), got {it!r}")
    return tuple(out)


def _add(args) -> int:
    from hypotest.outputs import check_output_file
    from library.build import add_to_library
    from library.priors import PriorConfig
    from library.spec import OrientationConfig

    if args.zone_axis:
        ori = OrientationConfig(
            mode="zone_axis",
            zone_axis=tuple(args.zone_axis),
            min_lengths=tuple(args.min_lengths),
            beam_repeats=args.beam_repeats,
            vacuum=args.vacuum,
        )
    else:
        ori = OrientationConfig(mode="as_is")
    pri = PriorConfig(kind=args.priors, temperature=args.temperature, chemical_potentials=_mu(args.mu))
    check_output_file(args.library, option="library", example="library.h5")  # it is rewritten
    with _writing(args.library, "library"):
        out, added = add_to_library(
            args.library, args.files, family=args.family, orientation=ori, priors=pri,
            allow_mixed_cells=args.allow_mixed_cells,
        )  # fmt: skip
    for e in added:
        print(f"added {e.id}  {e.name}")
    print(f"wrote {out}")
    return 0


def _export(args) -> int:
    from hypotest.outputs import atomic_dir
    from library.export import export_library
    from library.format import open_library

    open_library(args.library).close()  # a missing or broken library is reported before --out is touched
    with atomic_dir(args.out) as tmp, _writing(args.out, "--out"):
        paths = export_library(args.library, args.format, tmp, family=args.family)
    print(f"wrote {len(paths)} file(s) to {args.out}")
    return 0

