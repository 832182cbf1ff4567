"""Fuzzing the frame readers (:mod:`hypotest.frames`): random bytes under every extension, random
arrays of random shapes and dtypes written in every format, and valid files truncated or with
flipped bytes. Every read ends in a precise InputError naming the file or in the right frames,
never in another exception or a hang."""

from __future__ import annotations

import contextlib
import signal
import warnings

import h5py
import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forward.errors import InputError
from hypotest.frames import SUPPORTED_EXTENSIONS, read_frames, read_image_frames

#: Seconds one read may take before it counts as a hang (files here are at most a few kB).
HANG_S = 60
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

DTYPES = ["u1", "<u2", ">u2", "<i4", "<f2", "<f4", ">f8", "<c8", "?", "<U3", "O", "V4", "M8[s]"]


@contextlib.contextmanager
def _no_hang(what: str):
    def _raise(signum, frame):
        raise TimeoutError(f"reading {what} took more than {HANG_S} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _read(path):
    """``read_frames(path)`` or its InputError; any other exception fails the test."""
    with _no_hang(str(path)):
        try:
            return read_frames(path)
        except InputError as exc:
            assert str(path).split(":/")[0].rsplit("/", 1)[-1] in str(exc), f"the error does not name the file: {exc}"
            return exc


def _expected_stack(arr: np.ndarray) -> np.ndarray | None:
    """What a reader must return for a stored array: [n, ...] frames, or None when it must refuse."""
    if arr.dtype.kind not in "uif" or arr.ndim not in (2, 3, 4, 5):
        return None
    frame_axes = 2 if arr.ndim in (2, 3) else 4
    if min(arr.shape[-frame_axes:], default=0) < 1:
        return None
    return arr[None] if arr.ndim in (2, 4) else arr


@st.composite
def arrays(draw, max_ndim=6):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=max_ndim)))
    n = int(np.prod(shape))
    if dtype.kind == "O":
        return np.array([{"k": i} for i in range(n)] + [None], dtype=object)[:n].reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@given(ext=st.sampled_from(sorted(SUPPORTED_EXTENSIONS)), data=st.binary(max_size=2048))
@FUZZ
def test_random_bytes_under_every_extension(tmp_path, ext, data):
    path = tmp_path / f"f{ext}"
    path.write_bytes(data)
    out = _read(path)
    if not isinstance(out, InputError):  # random bytes that happen to parse: a well-formed stack
        assert out.frames.ndim in (3, 5) and out.frames.dtype.kind in "uif"


def _assert_read_as(out, arr):
    want = _expected_stack(arr)
    if want is None:
        assert isinstance(out, InputError), f"{arr.dtype} {arr.shape} should be refused, got {out}"
    else:
        assert not isinstance(out, InputError), out
        np.testing.assert_array_equal(out.frames, want)
        assert out.frames.dtype == arr.dtype.newbyteorder("=") or out.frames.dtype == arr.dtype


@given(arr=arrays())
@FUZZ
def test_random_arrays_in_npy_and_npz(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)  # an object array is pickled: it must be refused
    _assert_read_as(_read(tmp_path / "a.npy"), arr)
    with _no_hang("a.npy"):  # what `hypotest score` reads: finite images [T, mx, my] float64, or InputError
        try:
            images = read_image_frames(tmp_path / "a.npy").frames
        except InputError as exc:
            assert "a.npy" in str(exc)
        else:
            want = _expected_stack(arr)
            assert want is not None and want.ndim == 3 and images.dtype == np.float64
            assert np.all(np.isfinite(images)) and images.shape == want.shape
            np.testing.assert_array_equal(images, want.astype(np.float64))
    np.savez(tmp_path / "a.npz", frames=arr)
    _assert_read_as(_read(tmp_path / "a.npz"), arr)


@given(arr=arrays())
@FUZZ
def test_random_arrays_in_hdf5(tmp_path, arr):
    try:
        with h5py.File(tmp_path / "a.h5", "w") as h5:
            h5["frames"] = arr
    except (TypeError, ValueError):  # a dtype HDF5 cannot store (objects, unicode, datetimes)
        return
    out = _read(tmp_path / "a.h5")
    if arr.dtype.kind == "V":  # stored as an opaque type, read back as such: refused either way
        assert isinstance(out, InputError)
    else:
        _assert_read_as(out, arr)


@given(arr=arrays(max_ndim=4))
@FUZZ
def test_random_arrays_in_mrc(tmp_path, arr):
    try:  # the writer's header statistics may overflow on random floats: not the reader's concern
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.new(tmp_path / "a.mrc", overwrite=True) as mrc:
                mrc.set_data(arr)
    except (ValueError, TypeError):  # a dtype or shape MRC cannot store
        return
    out = _read(tmp_path / "a.mrc")
    if isinstance(out, InputError):
        assert _expected_stack(arr) is None or arr.ndim == 4 or arr.size == 0
    else:  # MRC stores 2-D and 3-D arrays in its own dtypes (uint8 -> int8 or uint8, float16 ...)
        want = _expected_stack(arr)
        assert want is not None
        with np.errstate(invalid="ignore"):  # random bytes make signalling NaNs, which the cast flags
            np.testing.assert_array_equal(out.frames.astype(np.float64), want.astype(np.float64))


@given(arr=arrays(max_ndim=4))
@FUZZ
def test_random_arrays_in_tiff(tmp_path, arr):
    import tifffile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tifffile.imwrite(tmp_path / "a.tif", arr)
    except Exception:  # noqa: BLE001 - whatever tifffile cannot write is not the reader's concern
        return
    out = _read(tmp_path / "a.tif")
    want = _expected_stack(arr)
    if not isinstance(out, InputError) and want is not None and want.ndim == 3:
        np.testing.assert_array_equal(out.frames.reshape(want.shape), want)


@pytest.mark.parametrize("ext", [".npy", ".npz", ".h5", ".mrc", ".tif"])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_truncated_and_corrupted_valid_files(tmp_path, ext, cut, flips):
    stack = (np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7) * 17) % 4000
    path = tmp_path / f"v{ext}"
    if ext == ".npy":
        np.save(path, stack)
    elif ext == ".npz":
        np.savez(path, frames=stack)
    elif ext == ".h5":
        with h5py.File(path, "w") as h5:
            h5.create_dataset("frames", data=stack, chunks=(1, 6, 7))
    elif ext == ".mrc":
        with mrcfile.new(path, data=stack, overwrite=True) as mrc:
            mrc.voxel_size = 0.5
    else:
        import tifffile

        tifffile.imwrite(path, stack, photometric="minisblack")
    raw = bytearray(path.read_bytes())
    for where, value in flips:
        raw[min(int(where * len(raw)), len(raw) - 1)] = value
    path.write_bytes(bytes(raw[: max(1, int(round(cut * len(raw))))] if cut < 1.0 else raw))
    out = _read(path)
    if not isinstance(out, InputError):
        assert out.frames.ndim in (3, 5) and out.frames.dtype.kind in "uif"
        with _no_hang(str(path)):
            try:
                read_image_frames(path)
            except InputError:
                pass
