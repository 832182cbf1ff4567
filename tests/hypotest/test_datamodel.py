"""The hypotest data model: Hypothesis (with its content-hash id and provenance)."""

import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import forward as F
from forward import InputError
from hypotest import make_hypothesis
from library import Provenance, content_id
from tests.pytree_checks import check_all


def _specimen(shift=0.0):
    return F.make_specimen(
        [[0.0 + shift, 0.0, 1.0], [1.6, 0.9, 2.5], [1.6, 0.9, 0.5]], ["Mo", "S", "S"], [3.2, 2.8, 3.0]
    )


PROV = Provenance(
    source="MoS2.vasp", source_sha256="ab" * 32, code="VASP 6.4", functional="PBE",
    supercell=(3, 3, 1), energy=-21.5, charge=0, notes=(("relax", "fmax=0.05"),),
)  # fmt: skip


def test_hypothesis_pytree_contract():
    # Stacking needs identical static metadata: the same hypothesis with perturbed leaves.
    base = make_hypothesis(_specimen(), name="pristine", family="MoS2", prior=0.5, provenance=PROV)
    check_all(
        lambda i: jax.tree.map(lambda x: x + 0.01 * i if np.issubdtype(np.asarray(x).dtype, np.floating) else x, base)
    )


def test_hypothesis_fields_and_pickle_keep_metadata():
    h = make_hypothesis(_specimen(), name="pristine", family="MoS2", prior=2.0, provenance=PROV)
    back = pickle.loads(pickle.dumps(h))
    assert (back.id, back.name, back.family, back.provenance) == (h.id, "pristine", "MoS2", PROV)
    assert float(back.prior) == 2.0
    assert h.id == content_id(h.specimen) and h.id.startswith("h") and len(h.id) == 17


def test_content_id_is_stable_and_order_and_translation_invariant():
    s = _specimen()
    perm = F.make_specimen(s.positions[::-1], s.numbers[::-1], s.cell)
    moved = F.make_specimen(s.positions + np.array([3.2, -2.8, 0.0]), s.numbers, s.cell)
    assert content_id(s) == content_id(perm) == content_id(moved)
    assert content_id(s) != content_id(_specimen(shift=0.01))
    other_species = F.make_specimen(s.positions, ["W", "S", "S"], s.cell)
    assert content_id(other_species) != content_id(s)
    # stable across processes (no salted hash()): recompute in a fresh interpreter
    code = (
        "import forward as F; from library import content_id;"
        "s=F.make_specimen([[0.0,0.0,1.0],[1.6,0.9,2.5],[1.6,0.9,0.5]],['Mo','S','S'],[3.2,2.8,3.0]);"
        "print(content_id(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == content_id(s)


def test_content_id_rejects_batches():
    batch = F.stack_specimens([_specimen(), _specimen(0.1)])
    with pytest.raises(InputError, match="one specimen, not a stacked batch"):
        content_id(batch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior": -1.0}, r"prior weight must be finite and >= 0, got -1.0"),
        ({"prior": float("nan")}, "prior weight must be finite"),
        ({"prior": "high"}, "prior must be a number, got 'high'"),
        ({"provenance": {"code": "VASP"}}, r"provenance must be a library\.Provenance, got dict"),
    ],
)
def test_hypothesis_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_hypothesis(_specimen(), **kwargs)


def test_hypothesis_needs_a_specimen():
    with pytest.raises(InputError, match="specimen must be a forward.Specimen"):
        make_hypothesis(np.zeros((3, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"energy": float("inf")}, "provenance energy must be finite or None"),
        ({"supercell": (1, 0, 1)}, "supercell must be 3 positive integers"),
    ],
)
def test_provenance_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        Provenance(**kwargs)
