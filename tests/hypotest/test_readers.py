"""Frame files: every format written for real (numpy, mrcfile, h5py, rosettasciio/tifffile), read back
as [n, mx, my] with the file's rows as x and columns as y, sampling converted to Å."""

import h5py
import mrcfile
import numpy as np
import pytest

from forward.errors import InputError
from hypotest.frames import SUPPORTED_EXTENSIONS, open_frames, read_frames, read_image_frames

# A stack whose entries say where they are: value = 100*n + 10*row + col, so a transpose shows.
STACK = (100 * np.arange(3)[:, None, None] + 10 * np.arange(4)[None, :, None] + np.arange(5)[None, None, :]).astype(
    np.uint16
)


def test_npy_stack_and_single_frame(tmp_path):
    np.save(tmp_path / "s.npy", STACK)
    ff = read_frames(tmp_path / "s.npy")
    assert ff.frames.shape == (3, 4, 5) and ff.frames.dtype == np.uint16
    np.testing.assert_array_equal(ff.frames, STACK)  # rows -> x, columns -> y: no transpose
    assert ff.sampling is None and ff.meta["format"] == "npy"
    np.save(tmp_path / "one.npy", STACK[1].astype(np.float32))
    one = read_frames(tmp_path / "one.npy")
    assert one.frames.shape == (1, 4, 5)
    np.testing.assert_array_equal(one.frames[0], STACK[1])


def test_npz_frames_key_only_array_and_sampling(tmp_path):
    np.savez(tmp_path / "a.npz", frames=STACK, sampling=np.array([0.1, 0.2]))
    ff = read_frames(tmp_path / "a.npz")
    np.testing.assert_array_equal(ff.frames, STACK)
    assert ff.sampling == (0.1, 0.2)
    np.savez(tmp_path / "b.npz", STACK[:2])
    assert read_frames(tmp_path / "b.npz").frames.shape == (2, 4, 5)
    np.savez(tmp_path / "c.npz", x=STACK, y=STACK)
    with pytest.raises(InputError, match=r"c\.npz: expected an array named 'frames' or a single array, found keys \['x', 'y'\]"):
        read_frames(tmp_path / "c.npz")


def test_mrc_stack_voxel_size_maps_to_frame_axes(tmp_path):
    with mrcfile.new(tmp_path / "s.mrc", data=STACK) as mrc:
        mrc.voxel_size = (0.5, 0.25, 1.0)  # MRC (x, y, z) [Å]; x is the fastest (column) axis
    ff = read_frames(tmp_path / "s.mrc")
    np.testing.assert_array_equal(ff.frames, STACK)
    assert ff.sampling == (0.25, 0.5)  # frame axis 0 = file rows = MRC y
    assert ff.meta["voxel_size_xyz_A"] == [0.5, 0.25, 1.0]
    with mrcfile.new(tmp_path / "one.mrc", data=STACK[0].astype(np.float32)) as mrc:
        pass  # voxel size left unset (0)
    one = read_frames(tmp_path / "one.mrc")
    assert one.frames.shape == (1, 4, 5) and one.sampling is None
    assert "unset" in one.meta["sampling_note"]


def test_emd_1_0_group_with_dims_in_nm(tmp_path):
    path = tmp_path / "s.emd"
    with h5py.File(path, "w") as h5:
        h5.attrs["version_major"], h5.attrs["version_minor"] = 0, 2
        g = h5.create_group("data/scan")
        g.attrs["emd_group_type"] = 1
        g.create_dataset("data", data=STACK)
        for k, (n, step, unit) in enumerate([(3, 1.0, "[s]"), (4, 0.02, "[n_m]"), (5, 0.03, "[n_m]")], 1):
            d = g.create_dataset(f"dim{k}", data=np.arange(n) * step)
            d.attrs["name"], d.attrs["units"] = f"axis{k}", unit
    ff = read_frames(path)
    np.testing.assert_array_equal(ff.frames, STACK)
    assert ff.sampling == pytest.approx((0.2, 0.3))  # nm -> Å
    assert ff.meta["format"] == "emd" and ff.meta["dataset"] == "/data/scan/data"


def test_hdf5_dataset_path_and_sampling_attribute(tmp_path):
    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("exp/frames", data=STACK).attrs["sampling"] = [0.1, 0.1]
        h5.create_dataset("exp/dark", data=STACK[0])
    ff = read_frames(f"{path}:/exp/frames")
    np.testing.assert_array_equal(ff.frames, STACK)
    assert ff.sampling == (0.1, 0.1) and ff.path.endswith("raw.h5:/exp/frames")
    with pytest.raises(InputError, match=r"raw\.h5: not an EMD 1\.0 file .* 2 datasets .*name the frames as"):
        read_frames(path)
    with pytest.raises(InputError, match=r"no dataset '/exp/nope' in the file; datasets: \['/exp/dark', '/exp/frames'\]"):
        read_frames(f"{path}:/exp/nope")


def test_tiff_stack_via_rosettasciio_nm_to_angstrom(tmp_path):
    from rsciio.tiff import file_writer

    axes = [
        {"name": "frame", "size": 3, "navigate": True, "scale": 1.0, "offset": 0.0, "units": ""},
        {"name": "height", "size": 4, "navigate": False, "scale": 0.05, "offset": 0.0, "units": "nm"},
        {"name": "width", "size": 5, "navigate": False, "scale": 0.04, "offset": 0.0, "units": "nm"},
    ]
    file_writer(str(tmp_path / "s.tif"), {"data": STACK, "axes": axes, "metadata": {}, "original_metadata": {}})
    ff = read_frames(tmp_path / "s.tif")
    np.testing.assert_array_equal(ff.frames, STACK)
    assert ff.sampling == pytest.approx((0.5, 0.4))
    assert "converted to Å" in ff.meta["sampling_note"]


def test_uncalibrated_tiff_has_no_sampling(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tiff", STACK[2])
    ff = read_frames(tmp_path / "plain.tiff")
    np.testing.assert_array_equal(ff.frames, STACK[2:])
    assert ff.sampling is None and "not a length" in ff.meta["sampling_note"]


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match=r"nope\.npy: no such file; give the path of an existing frame file"):
        read_frames(tmp_path / "nope.npy")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"unknown frame file extension '\.png'; supported: \.npy, \.npz, \.mrc"):
        read_frames(tmp_path / "x.png")
    assert set(SUPPORTED_EXTENSIONS) >= {".dm3", ".dm4", ".tif", ".emd", ".h5"}


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz", "bad.mrc", "bad.h5", "bad.tif", "bad.dm3", "bad.dm4"])
def test_corrupt_file_names_file_and_failure(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a frame file at all" * 4)
    with pytest.raises(InputError, match=rf"{name}: cannot read as .*; the file is corrupt, truncated or not"):
        read_frames(path)


def test_a_missing_reader_package_is_not_called_a_corrupt_file(tmp_path, monkeypatch):
    import sys

    (tmp_path / "x.dm3").write_bytes(b"not read at all")
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)  # import now raises ModuleNotFoundError
    with pytest.raises(InputError, match=r"x\.dm3: reading DigitalMicrograph DM3/DM4 needs the Python package "
                                         r"'rsciio.digitalmicrograph', which is not installed") as e:  # fmt: skip
        read_frames(tmp_path / "x.dm3")
    assert "corrupt" not in str(e.value)


def test_truncated_npy_readable_frames_and_error(tmp_path):
    np.save(tmp_path / "t.npy", STACK)
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) - 10])  # loses 10 of the last frame's 40 bytes
    with open_frames(tmp_path / "t.npy") as reader:
        assert reader.n_frames == 3 and reader.meta["complete_frames"] == 2
        np.testing.assert_array_equal(reader.frame(1), STACK[1])
        with pytest.raises(InputError, match=r"frame 2 lies beyond the end of the file: the header declares 3"):
            reader.frame(2)
    with pytest.raises(InputError, match=r"t\.npy: frame 2 lies beyond the end of the file"):
        read_frames(tmp_path / "t.npy")


def test_truncated_mrc(tmp_path):
    with mrcfile.new(tmp_path / "t.mrc", data=STACK) as mrc:
        mrc.voxel_size = 1.0
    raw = (tmp_path / "t.mrc").read_bytes()
    (tmp_path / "t.mrc").write_bytes(raw[:-10])
    with pytest.raises(InputError, match=r"t\.mrc: cannot read as MRC \(ValueError: Expected 120 bytes in data block"):
        read_frames(tmp_path / "t.mrc")


def test_wrong_ndim_and_dtype(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(7))
    with pytest.raises(InputError, match=r"expected one frame \[mx, my\] or a stack \[n, mx, my\], .* got a 1-D array"):
        read_frames(tmp_path / "v.npy")
    with h5py.File(tmp_path / "6d.h5", "w") as h5:
        h5["scan"] = np.zeros((2, 2, 2, 2, 3, 3), np.uint16)
    with pytest.raises(InputError, match=r"a 4D-STEM frame \[sx, sy, kx, ky\] .* got a 6-D array of shape \[2, 2, 2, 2, 3, 3\]"):
        read_frames(tmp_path / "6d.h5")
    np.save(tmp_path / "c.npy", np.zeros((2, 2), np.complex64))
    with pytest.raises(InputError, match=r"expected integer or real counts, got dtype complex64"):
        read_frames(tmp_path / "c.npy")


def test_4dstem_frames_one_or_a_stack(tmp_path):
    scan = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)  # [sx, sy, kx, ky]
    with h5py.File(tmp_path / "4d.h5", "w") as h5:
        h5["scan"] = scan
    np.testing.assert_array_equal(read_frames(tmp_path / "4d.h5").frames, scan[None])
    np.save(tmp_path / "4d.npy", np.stack([scan, scan + 1]))
    with open_frames(tmp_path / "4d.npy") as reader:
        assert reader.n_frames == 2 and reader.frame_shape == (2, 3, 4, 5)
        np.testing.assert_array_equal(reader.frame(1), scan + 1)


def test_frame_index_out_of_range(tmp_path):
    np.save(tmp_path / "s.npy", STACK)
    with open_frames(tmp_path / "s.npy") as reader, pytest.raises(InputError, match=r"frame index 3 out of range \[0, 3\)"):
        reader.frame(3)


def _damaged_h5(path):
    """A chunked, compressed stack [3, 32, 32] whose frame-1 chunk is overwritten with zeros."""
    frames = np.random.default_rng(0).integers(0, 60000, (3, 32, 32), dtype=np.uint16)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("frames", data=frames, chunks=(1, 32, 32), compression="gzip")
    with h5py.File(path, "r") as h5:
        offset = h5["frames"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        fh.write(b"\x00" * 50)
    return frames


def test_damaged_hdf5_chunk_fails_only_that_frame(tmp_path):
    frames = _damaged_h5(tmp_path / "d.h5")
    with open_frames(tmp_path / "d.h5") as reader:
        np.testing.assert_array_equal(reader.frame(0), frames[0])
        with pytest.raises(InputError, match=r"d\.h5:/frames: frame 1 of 3 cannot be read \(OSError: .*\); the file is damaged"):
            reader.frame(1)
        np.testing.assert_array_equal(reader.frame(2), frames[2])
    with pytest.raises(InputError, match=r"frame 1 of 3 cannot be read"):
        read_frames(tmp_path / "d.h5")


def test_text_and_pickled_npy_say_what_they_are_and_never_suggest_unpickling(tmp_path):
    import pickle

    np.savetxt(tmp_path / "t.npy", STACK[0])
    with pytest.raises(InputError, match=r"t\.npy: cannot read as \.npy \(it holds text \('0\.0.*numpy\.savetxt\).*"
                                         r"expected the binary \.npy format numpy\.save writes") as text:
        read_frames(tmp_path / "t.npy")
    (tmp_path / "p.npy").write_bytes(pickle.dumps({"frames": [1, 2]}))
    with pytest.raises(InputError, match=r"p\.npy: .*it holds a Python pickle, not a NumPy array \(frames are never "
                                         r"unpickled") as pickled:
        read_frames(tmp_path / "p.npy")
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o\.npy: holds Python objects \(a pickled object array, dtype object\), "
                                         r"expected integer or real counts; frames are never unpickled") as objects:
        read_frames(tmp_path / "o.npy")
    np.savez(tmp_path / "o.npz", frames=np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(InputError, match=r"o\.npz array 'frames': holds Python objects") as npz:
        read_frames(tmp_path / "o.npz")
    for exc in (text, pickled, objects, npz):
        assert "allow_pickle" not in str(exc.value)


def test_npz_counts_key_and_frames_without_pixels(tmp_path):
    np.savez(tmp_path / "c.npz", counts=STACK, dark=STACK[0])  # `hypotest score` has always taken 'counts'
    np.testing.assert_array_equal(read_frames(tmp_path / "c.npz").frames, STACK)
    np.save(tmp_path / "z.npy", np.zeros((3, 0, 5), np.uint16))
    with pytest.raises(InputError, match=r"z\.npy: a frame needs at least one pixel along each axis, got an array of shape \[3, 0, 5\]"):
        read_frames(tmp_path / "z.npy")
    np.save(tmp_path / "none.npy", np.zeros((0, 4, 5), np.uint16))  # no frames: a replay has nothing to send
    assert read_frames(tmp_path / "none.npy").frames.shape == (0, 4, 5)


def test_image_frames_for_scoring_name_file_frame_and_pixel_of_a_nan(tmp_path):
    bad = STACK.astype(np.float32)
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match=r"nan\.npy: frame 1 of 3 holds nan at pixel \(2, 3\) \(1 non-finite pixel\(s\) "
                                         r"in that frame\); frames must be finite counts"):
        read_image_frames(tmp_path / "nan.npy")
    bad[1, 2, 3] = np.inf
    with h5py.File(tmp_path / "inf.h5", "w") as h5:
        h5["frames"] = bad
    with pytest.raises(InputError, match=r"inf\.h5:/frames: frame 1 of 3 holds inf at pixel \(2, 3\)"):
        read_image_frames(tmp_path / "inf.h5")
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.uint16))
    with pytest.raises(InputError, match=r"4d\.npy: holds 4D-STEM frames \[2, 3, 4, 5\] .*score 4D-STEM data with `hypotest live"):
        read_image_frames(tmp_path / "4d.npy")
    np.save(tmp_path / "none.npy", np.zeros((0, 4, 5), np.uint16))
    with pytest.raises(InputError, match=r"none\.npy: holds no frames \(a stack of shape \[0, 4, 5\]\)"):
        read_image_frames(tmp_path / "none.npy")
    np.save(tmp_path / "s.npy", STACK)
    ff = read_image_frames(tmp_path / "s.npy")
    assert ff.frames.dtype == np.float64 and ff.frame_shape == (4, 5)
    np.testing.assert_array_equal(ff.frames, STACK)
