"""Library file format at scale: build (write) time and random-access read time.

    .venv/bin/python benchmarks/library_format.py --n 100000

Makes ``n`` distinct synthetic hypotheses (12 atoms each: a 3 x 2 x 2 grid 2.5 Å apart, jittered
by up to 0.3 Å, four elements, 50 families), writes them with :func:`library.write_library`, then
reads ``--reads`` random ids one at a time (a fresh :class:`library.LibraryFile`, as a worker
would) and a few whole families. Reports wall-clock seconds from ``time.perf_counter``; the entry
construction (validation and content hashing) is timed separately from the file write.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from forward import make_specimen
from library import Provenance, make_entry, open_library, write_library


def synthetic_entries(n: int, n_families: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    base = grid * 2.5 + 1.5
    out = []
    for i in range(n):
        spec = make_specimen(base + rng.uniform(-0.3, 0.3, base.shape), rng.choice([8, 22, 38, 42], len(base)), [7.5, 5.0, 7.0], 0.05)
        prov = Provenance(source=f"synthetic#{i}", code="benchmark", energy=-0.01 * i)
        out.append(make_entry(spec, name=f"s{i}", family=f"fam{i % n_families}", tags=("synthetic",), provenance=prov))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--families", type=int, default=50)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="library file (default: a temporary file)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    entries = synthetic_entries(args.n, args.families)
    t_make = time.perf_counter() - t0

    tmpdir = None
    path = args.out
    if path is None:
        tmpdir = tempfile.TemporaryDirectory()
        path = Path(tmpdir.name) / "bench.h5"
    t0 = time.perf_counter()
    write_library(path, entries)
    t_write = time.perf_counter() - t0
    size_mb = os.path.getsize(path) / 1e6

    rng = np.random.default_rng(1)
    picks = rng.integers(0, args.n, args.reads)
    t0 = time.perf_counter()
    for k in picks:
        with open_library(path) as lib:
            e = lib.get(entries[int(k)].id)
        assert e.id == entries[int(k)].id
    t_cold = (time.perf_counter() - t0) / args.reads

    with open_library(path) as lib:
        lib.get(entries[0].id)  # loads the id index once
        t0 = time.perf_counter()
        for k in picks:
            lib.get(entries[int(k)].id)
        t_warm = (time.perf_counter() - t0) / args.reads
        fams = lib.families[:5]
        t0 = time.perf_counter()
        sizes = [len(lib.family(f)) for f in fams]
        t_fam = (time.perf_counter() - t0) / len(fams)

    print(f"hypotheses:                  {args.n} ({entries[0].specimen.n_atoms} atoms each, {args.families} families)")
    print(f"make entries (validate+hash): {t_make:.2f} s")
    print(f"write library (build):        {t_write:.2f} s  ({size_mb:.1f} MB)")
    print(f"read one id, fresh open:      {t_cold * 1e3:.2f} ms (mean of {args.reads})")
    print(f"read one id, open file:       {t_warm * 1e3:.3f} ms (mean of {args.reads})")
    print(f"read one family ({sizes[0]} hyp.):  {t_fam * 1e3:.1f} ms (mean of {len(fams)})")
    if tmpdir is not None:
        tmpdir.cleanup()


if __name__ == "__main__":
    main()
