"""Light modules load without JAX: ``library`` (its specs, structure files and a library file's
index), the frame-stream codec and the frame readers import only ``forward.errors`` of the
physics; the lazy ``forward``/``library``/``hypotest`` packages still give every public name."""

import json
import subprocess
import sys

import numpy as np

import forward
import hypotest
import library

#: Runs in a fresh interpreter: imports and uses the light modules, then prints what it loaded.
_LIGHT = """
import json, sys
import numpy as np
import library, library.format, library.spec, library.ingest
import hypotest.live.zmqstream as zs, hypotest.live.events, hypotest.frames
from forward import InputError
from library.builtin import library_path, spec_path
spec = library.spec.load_spec(spec_path("mos2_defects"))
cands = library.ingest.read_structures(sys.argv[1])
with library.format.open_library(library_path("mos2_defects")) as lib:
    index = (lib.families, len(lib.ids()), lib.family_info(lib.families[0]).size)
header, counts = zs.encode_frame(np.ones((4, 5), np.uint16), 3)
frames = hypotest.frames.read_frames(sys.argv[2]).frames
try:
    hypotest.frames.read_frames(sys.argv[1])
except InputError as exc:
    refused = str(exc)
print(json.dumps({"jax": sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "jaxlib"))),
                  "families": len(spec.families), "candidates": len(cands), "index": index,
                  "header": json.loads(header)["shape"], "frames": list(frames.shape), "refused": refused}))
"""


def test_library_stream_codec_and_frame_readers_load_without_jax(tmp_path):
    from ase.build import mx2
    from ase.io import write

    write(tmp_path / "mos2.cif", mx2("MoS2", vacuum=3.0))
    np.save(tmp_path / "frames.npy", np.ones((2, 4, 5), np.uint16))
    out = subprocess.run(
        [sys.executable, "-c", _LIGHT, str(tmp_path / "mos2.cif"), str(tmp_path / "frames.npy")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["jax"] == []
    assert got["families"] == 1 and got["candidates"] == 1 and got["index"][1] == 8
    assert got["header"] == [4, 5] and got["frames"] == [2, 4, 5]
    assert "unknown frame file extension '.cif'" in got["refused"]


def test_the_plain_import_of_the_issue_loads_no_jax():
    code = "import library, hypotest.live.zmqstream, sys; assert 'jax' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr


def test_lazy_packages_give_every_public_name():
    for pkg in (forward, library, hypotest):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, (pkg.__name__, name)
        assert set(pkg.__all__) <= set(dir(pkg))
    assert forward.hrtem.make_hrtem_simulator is forward.make_hrtem_simulator  # submodules on attribute access
    assert library.builtin.NAMES == ("mos2_defects", "mos2_se", "pt111_adsorbates", "srtio3_vacancy")
    ns: dict = {}
    exec("from forward import *", ns)  # noqa: S102 - the star import a notebook may do
    assert {"make_beam", "InputError", "Specimen", "expected_electrons"} <= set(ns)
    for pkg, missing in ((forward, "no_such_name"), (library, "nope"), (hypotest, "_private")):
        try:
            getattr(pkg, missing)
        except AttributeError as exc:
            assert repr(missing) in str(exc)
        else:
            raise AssertionError(f"{pkg.__name__}.{missing} should not exist")
