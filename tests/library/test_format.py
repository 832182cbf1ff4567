"""The library file: round trip, partial reads (one id, one family), atomic writes, duplicate ids,
schema checks; 2,000 hypotheses by default, 100,000 as a slow test."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from forward import InputError, make_specimen
from library import FamilyInfo, Provenance, make_entry, open_library, read_entries, write_library
from library.format import SCHEMA_VERSION


def synthetic_entries(n: int, n_atoms: int = 12, n_families: int = 4, seed: int = 0):
    """``n`` distinct entries: a 3 x 2 x 2 grid of atoms 2.5 Å apart, jittered by up to 0.3 Å."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    base = (grid[:n_atoms] * 2.5 + 1.5).astype(np.float64)
    cell = [7.5, 5.0, 7.0]
    out = []
    for i in range(n):
        pos = base + rng.uniform(-0.3, 0.3, base.shape)
        z = rng.choice([8, 22, 38, 42], size=len(base))
        spec = make_specimen(pos, z, cell, 0.05)
        prov = Provenance(source=f"synthetic#{i}", code="test", energy=float(-i) * 0.01, notes=(("i", str(i)),))
        out.append(make_entry(spec, name=f"s{i}", family=f"fam{i % n_families}", tags=("synthetic",), prior=1.0, provenance=prov))
    return out


def _same(a, b):
    assert a.id == b.id and a.name == b.name and a.family == b.family and a.tags == b.tags
    assert a.provenance == b.provenance
    assert float(a.prior) == float(b.prior)
    for f in ("positions", "numbers", "cell", "dw_sigmas"):
        np.testing.assert_array_equal(np.asarray(getattr(a.specimen, f)), np.asarray(getattr(b.specimen, f)))


def test_round_trip_everything(tmp_path):
    es = synthetic_entries(50)
    infos = [FamilyInfo("fam1", prior_explanation="uniform", notes=(("k", "v"),))]
    p = write_library(tmp_path / "lib.h5", es, infos, metadata={"name": "t"})
    got, fams, meta = read_entries(p)
    assert meta == {"name": "t"}
    by_id = {e.id: e for e in got}
    for e in es:
        _same(e, by_id[e.id])
    f1 = next(f for f in fams if f.name == "fam1")
    assert f1.prior_explanation == "uniform" and f1.notes == (("k", "v"),) and f1.size == 13
    assert all(f.shared_cell for f in fams)


def test_one_id_and_one_family_without_the_rest(tmp_path):
    es = synthetic_entries(2000)
    p = write_library(tmp_path / "lib.h5", es)
    with open_library(p) as lib:
        assert len(lib) == 2000
        assert lib.families == ["fam0", "fam1", "fam2", "fam3"]
        for k in (0, 777, 1999):
            _same(lib.get(es[k].id), es[k])
        fam = lib.family("fam2")
        assert [e.name for e in fam] == [e.name for e in es if e.family == "fam2"]
        with pytest.raises(InputError, match=r"no hypothesis with id 'h0000'"):
            lib.get("h0000")
        with pytest.raises(InputError, match=r"no family 'nope'"):
            lib.family("nope")


def test_duplicate_id_is_refused_and_nothing_is_written(tmp_path):
    es = synthetic_entries(3)
    dup = dataclasses.replace(es[0], name="copy", family="other")
    with pytest.raises(InputError, match=r"duplicate id h[0-9a-f]{16}: 'copy' in family 'other' \(from synthetic#0\)"):
        write_library(tmp_path / "lib.h5", es + [dup])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_the_old_library_untouched(tmp_path, monkeypatch):
    p = write_library(tmp_path / "lib.h5", synthetic_entries(5))
    before = p.read_bytes()

    class Boom(RuntimeError):
        pass

    import library.format as fmt

    real = fmt.provenance_to_json
    calls = []

    def failing(prov):
        calls.append(1)
        if len(calls) > 3:
            raise Boom("disk full")
        return real(prov)

    monkeypatch.setattr(fmt, "provenance_to_json", failing)
    with pytest.raises(Boom):
        write_library(p, synthetic_entries(8, seed=1))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["lib.h5"]  # no temp file left behind


def test_mixed_cells_are_flagged(tmp_path):
    es = synthetic_entries(2, n_families=1)
    s = es[1].specimen
    bigger = make_specimen(s.positions, s.numbers, [8.0, 5.0, 7.0])
    es[1] = make_entry(bigger, name="big", family="fam0")
    p = write_library(tmp_path / "lib.h5", es)
    with open_library(p) as lib:
        assert lib.family_info("fam0").shared_cell is False


def test_not_a_library_and_wrong_schema(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match=r"x\.h5: not a readable HDF5 library file"):
        open_library(tmp_path / "x.h5")
    import h5py

    with h5py.File(tmp_path / "old.h5", "w") as h:
        h.attrs["format"] = "hypotest-library"
        h.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(InputError, match=rf"old\.h5: not a hypotest library of schema version {SCHEMA_VERSION}"):
        open_library(tmp_path / "old.h5")
    with pytest.raises(InputError, match=r"missing\.h5: no such library file"):
        open_library(tmp_path / "missing.h5")
    with pytest.raises(InputError, match=r"a library needs at least one entry"):
        write_library(tmp_path / "empty.h5", [])


@pytest.mark.slow
def test_100k_round_trip(tmp_path):
    es = synthetic_entries(100_000, n_families=50)
    p = write_library(tmp_path / "big.h5", es)
    rng = np.random.default_rng(1)
    with open_library(p) as lib:
        assert len(lib) == 100_000
        for k in rng.integers(0, 100_000, 20):
            _same(lib.get(es[int(k)].id), es[int(k)])
        assert len(lib.family("fam7")) == 2000


def test_entries_pickle_and_are_pytrees():
    import pickle

    import jax

    (e,) = synthetic_entries(1)
    _same(pickle.loads(pickle.dumps(e)), e)
    leaves, tree = jax.tree_util.tree_flatten(e)
    assert len(leaves) == 5  # positions, numbers, cell, dw_sigmas, prior
    back = jax.tree_util.tree_unflatten(tree, leaves)
    assert back.id == e.id and back.provenance == e.provenance
