"""Frames from files: .npy/.npz, MRC, HDF5/EMD, DM3/DM4 and TIFF, as ``[n, mx, my]`` stacks.

The one frame reader: ``hypotest score`` (:func:`read_image_frames`), ``hypotest live`` file
replay (:class:`hypotest.live.replay.FileReplaySource`) and ``hypotest stream send`` all read
files here, with the same errors.

Supported files (by extension)::

    .npy              one frame [mx, my] or a stack [n, mx, my]
    .npz              key ``frames`` (else ``counts``, else the only array); optional key
                      ``sampling`` [Å/pixel]
    .mrc .mrcs        MRC2014 (mrcfile); pixel size from the header voxel size [Å]
    .h5 .hdf5 .emd    HDF5 (h5py): an EMD 1.0 file (Berkeley/NCEM layout, ``/data/<name>/data``
                      with ``dim1..dimN`` axis vectors) or any dataset named as ``file.h5:/path``;
                      a plain dataset may carry a ``sampling`` attribute [Å/pixel]
    .dm3 .dm4         Gatan DigitalMicrograph via rosettasciio (``rsciio.digitalmicrograph``)
    .tif .tiff        TIFF via rosettasciio (``rsciio.tiff``)

Axis convention, the same for every format: frames are returned exactly in the order the file
stores them in C order, with no transpose. The last axis of the stored array (the fastest one: a
TIFF/DM/MRC *column*, the image width) is frame axis ``y``; the one before it (a *row*) is frame
axis ``x``; any leading axis is the frame number. This is abTEM's ``[x, y]`` indexing and what
``abtem.Images.to_tiff`` and ``numpy.save`` of an abTEM array write, so simulated frames
round-trip unchanged. An image viewer shows rows top to bottom, so it displays such a frame
transposed relative to abTEM's ``show()`` (which plots ``array.T``). The pixel size follows the
same mapping: ``sampling = (sx, sy)`` is the step along frame axis 0 (file rows) and axis 1 (file
columns). For MRC that is ``(voxel_size.y, voxel_size.x)``, because MRC's ``x`` is the fastest
axis.

Units: rosettasciio reports axis scales in the file's own units, for microscope files usually
nanometres; EMD 1.0 dim vectors carry a ``units`` attribute. Both are converted to Å here
(1 nm = 10 Å, 1 pm = 0.01 Å, 1 µm = 10⁴ Å). An axis whose unit is not a length (pixels,
reciprocal space ``1/nm``, none) gives ``sampling = None`` and says why in ``meta``.

:func:`open_frames` gives per-frame access (memory-mapped for .npy, dataset slicing for HDF5) so
a replay can report one unreadable frame and go on; :func:`read_frames` reads everything and
raises :class:`forward.errors.InputError` naming the file and what failed. Nothing is ever
unpickled (a pickle can run code): a ``.npy``/``.npz`` holding Python objects is refused as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from forward.errors import InputError

__all__ = [
    "FrameFile", "FrameReader", "open_frames", "read_frames", "read_image_frames", "frame_file_format",
    "absolute_frame_path",
    "SUPPORTED_EXTENSIONS",
]  # fmt: skip

#: Extension -> format name.
SUPPORTED_EXTENSIONS = {
    ".npy": "npy", ".npz": "npz", ".mrc": "mrc", ".mrcs": "mrc", ".h5": "hdf5", ".hdf5": "hdf5",
    ".emd": "hdf5", ".dm3": "dm", ".dm4": "dm", ".tif": "tiff", ".tiff": "tiff",
}  # fmt: skip

#: Length units -> Å per unit. Keys are lower case, brackets/underscores/spaces removed.
_ANGSTROM_PER_UNIT = {
    "a": 1.0, "å": 1.0, "\u212b": 1.0, "angstrom": 1.0, "angstroms": 1.0, "nm": 10.0,
    "nanometer": 10.0, "nanometre": 10.0, "pm": 0.01, "µm": 1e4, "μm": 1e4, "um": 1e4,
    "micron": 1e4, "mm": 1e7, "m": 1e10,
}  # fmt: skip

_H5_PATH = re.compile(r"^(?P<file>.*\.(?:h5|hdf5|emd)):(?P<dataset>/.*)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class FrameFile:
    """Every frame of one file.

    Attributes:
        path: the file (with ``:/dataset`` for an HDF5 dataset).
        frames: ``[n, mx, my]`` ([x, y] indexing as abTEM; see the module docstring for how file
            rows/columns map to x/y), the file's numeric dtype.
        sampling: pixel size ``(sx, sy)`` [Å/pixel], or None when the file does not say.
        meta: JSON-able description of the source (format, dataset, header fields, units seen).
    """

    path: str
    frames: np.ndarray
    sampling: tuple[float, float] | None
    meta: dict

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(mx, my)``, or ``(sx, sy, kx, ky)`` for 4D-STEM."""
        return tuple(int(n) for n in self.frames.shape[1:])


class FrameReader:
    """Per-frame access to one open file; use :func:`open_frames`. A context manager.

    Attributes:
        path, sampling, meta: as :class:`FrameFile`.
        n_frames: number of frames the file declares.
        frame_shape: ``(mx, my)``, or ``(sx, sy, kx, ky)`` for 4D-STEM.
        dtype: numpy dtype of the stored counts.
    """

    def __init__(self, path, n_frames, frame_shape, dtype, sampling, meta, get_fn, close_fn=None):
        self.path = path
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.sampling = sampling
        self.meta = meta
        self._get_fn = get_fn
        self._close_fn = close_fn

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as an in-memory ``[mx, my]`` array; InputError if it cannot be read."""
        if not 0 <= index < self.n_frames:
            raise InputError(f"{self.path}: frame index {index} out of range [0, {self.n_frames})")
        try:
            out = np.array(self._get_fn(index), copy=True)
        except InputError:
            raise
        except Exception as exc:  # h5py/OS errors of a damaged file: say which frame failed
            raise InputError(
                f"{self.path}: frame {index} of {self.n_frames} cannot be read "
                f"({type(exc).__name__}: {exc}); the file is damaged or was truncated"
            ) from None
        if out.shape != self.frame_shape:
            raise InputError(
                f"{self.path}: frame {index} has shape {list(out.shape)}, expected {list(self.frame_shape)}"
            )
        return out

    def close(self) -> None:
        """Release the file; idempotent."""
        fn, self._close_fn = self._close_fn, None
        if fn is not None:
            fn()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | os.PathLike) -> FrameFile:
    """Read every frame of ``path`` (see the module docstring for formats, axes and units).

    Raises:
        InputError: missing file, unknown extension, corrupt or truncated file, an array that is
            not one frame ``[mx, my]`` or a stack ``[n, mx, my]``, a non-numeric dtype.
    """
    with open_frames(path) as reader:
        # frame by frame: a header that declares more than the file holds fails at the first
        # missing frame instead of allocating the declared size
        frames = [reader.frame(i) for i in range(reader.n_frames)]
        stack = np.stack(frames) if frames else np.empty((0, *reader.frame_shape), dtype=reader.dtype)
        return FrameFile(path=reader.path, frames=stack, sampling=reader.sampling, meta=reader.meta)


def read_image_frames(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> FrameFile:
    """Every frame of ``path`` as images ``[T, mx, my]`` float64, checked for scoring (``hypotest score``).

    :func:`read_frames`, then: at least one frame, no 4D-STEM data (``hypotest score`` scores
    HRTEM and annular STEM images; 4D-STEM frames go to ``hypotest live``), every value finite
    unless ``allow_nonfinite`` (a field of view masks and counts such pixels,
    :func:`hypotest.fieldofview.bad_pixel_mask`).

    Raises:
        InputError: as :func:`read_frames`; an empty stack; 4D-STEM frames; a NaN or infinite
            value, naming the file, the frame and the pixel.
    """
    ff = read_frames(path)
    if len(ff.frame_shape) != 2:
        raise InputError(
            f"{ff.path}: holds 4D-STEM frames {list(ff.frame_shape)} ([sx, sy, kx, ky]); `hypotest score` takes "
            "images, one frame [mx, my] or a stack [n, mx, my]: score 4D-STEM data with "
            "`hypotest live --library LIB --source FRAMES --beam BEAM.json` (a 4D-STEM BEAM.json)"
        )
    if ff.frames.shape[0] == 0:
        raise InputError(f"{ff.path}: holds no frames (a stack of shape {list(ff.frames.shape)}); give at least one frame")
    with np.errstate(invalid="ignore"):  # a signalling NaN raises FE_INVALID in the cast; it is refused below
        frames = np.asarray(ff.frames, dtype=np.float64)
    for t, frame in enumerate(frames if not allow_nonfinite else ()):
        bad = ~np.isfinite(frame)
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise InputError(
                f"{ff.path}: frame {t} of {len(frames)} holds {frame[i, j]} at pixel ({i}, {j}) "
                f"({int(bad.sum())} non-finite pixel(s) in that frame); frames must be finite counts: mask or "
                "repair the bad pixels, or drop the frame"
            )
    return dataclasses.replace(ff, frames=frames)


def open_frames(path: str | os.PathLike) -> FrameReader:
    """Open ``path`` for per-frame reading (header checked now, frames read on demand).

    Same errors as :func:`read_frames` for what the header already shows; a frame that cannot be
    read later raises InputError from :meth:`FrameReader.frame`.
    """
    file, dataset, fmt = _resolve(path)
    opener = {"npy": _open_npy, "npz": _open_npz, "mrc": _open_mrc, "dm": _open_rsciio,
              "tiff": _open_rsciio, "hdf5": _open_hdf5}[fmt]  # fmt: skip
    return opener(file, dataset) if fmt == "hdf5" else opener(file, fmt)


def absolute_frame_path(path: str) -> str:
    """``path`` made absolute (a resumed session may run from elsewhere); ``file.h5:/dataset``
    keeps its dataset."""
    m = _H5_PATH.match(path)
    if m and not os.path.exists(path):
        return f"{os.path.abspath(m['file'])}:{m['dataset']}"
    return os.path.abspath(path)


def frame_file_format(path: str | os.PathLike) -> str:
    """The format name of ``path`` (a value of :data:`SUPPORTED_EXTENSIONS`) without reading it.

    Raises InputError for a missing file or an unknown extension (cheap: nothing is read).
    """
    return _resolve(path)[2]


def _resolve(path) -> tuple[Path, str | None, str]:
    """``(file, dataset or None, format)`` of ``path`` (``file.h5:/dataset`` split off)."""
    text = os.fspath(path)
    file_part, dataset = text, None
    m = _H5_PATH.match(text)
    if m and not Path(text).exists():
        file_part, dataset = m["file"], m["dataset"]
    file = Path(file_part)
    ext = file.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(
            f"{text}: unknown frame file extension {ext or '(none)'!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (an HDF5 dataset as file.h5:/path/to/dataset)"
        )
    if not file.is_file():
        raise InputError(f"{file}: no such file; give the path of an existing frame file")
    fmt = SUPPORTED_EXTENSIONS[ext]
    if dataset is not None and fmt != "hdf5":
        raise InputError(f"{text}: a ':/dataset' suffix is only meaningful for HDF5/EMD files")
    return file, dataset, fmt


# ---------------------------------------------------------------------------------------------
# shared checks


def _stack_shape(shape: tuple[int, ...], where: str, allow_4d: bool = True) -> tuple[int, tuple[int, ...]]:
    """``(n, frame shape)`` for a stored shape [mx, my] or [n, mx, my], or (``allow_4d``) one
    4D-STEM frame [sx, sy, kx, ky] or a stack of them [n, sx, sy, kx, ky]."""
    n_frame_axes = 4 if len(shape) in (4, 5) and allow_4d else 2
    if len(shape) in (2, 3, 4, 5) and (any(int(s) < 0 for s in shape) or any(int(s) < 1 for s in shape[-n_frame_axes:])):
        raise InputError(
            f"{where}: a frame needs at least one pixel along each axis, got an array of shape {list(shape)}"
        )
    if len(shape) == 2:
        return 1, (shape[0], shape[1])
    if len(shape) == 3:
        return shape[0], (shape[1], shape[2])
    if allow_4d and len(shape) == 4:
        return 1, tuple(shape)
    if allow_4d and len(shape) == 5:
        return shape[0], tuple(shape[1:])
    four = ", a 4D-STEM frame [sx, sy, kx, ky] or a stack [n, sx, sy, kx, ky]" if allow_4d else ""
    raise InputError(
        f"{where}: expected one frame [mx, my] or a stack [n, mx, my]{four}, got a {len(shape)}-D array "
        f"of shape {list(shape)}; select or reshape the frames before replaying"
    )


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "O":
        raise InputError(
            f"{where}: holds Python objects (a pickled object array, dtype object), expected integer or "
            "real counts; frames are never unpickled (unpickling can run code): save the counts as a "
            "numeric array, e.g. numpy.save(path, np.asarray(frames, dtype=np.uint16))"
        )
    if dtype.kind not in "uif":
        raise InputError(
            f"{where}: expected integer or real counts, got dtype {dtype}; convert the data to "
            "an integer or float array"
        )
    return dtype


def _corrupt(file: Path, what: str, exc: BaseException) -> InputError:
    if isinstance(exc, ModuleNotFoundError):  # the reader is missing, not the file broken
        return InputError(
            f"{file}: reading {what} needs the Python package {exc.name!r}, which is not installed in this "
            f"environment ({sys.executable}); install hypotest with its dependencies (`make setup`, or "
            "`pip install -c constraints.txt -e .`)"
        )
    return InputError(
        f"{file}: cannot read as {what} ({type(exc).__name__}: {exc}); the file is corrupt, truncated or not {what}"
    )


def _from_array(file, data, sampling, meta, close_fn=None) -> FrameReader:
    """A reader over an in-memory (or memory-mapped/lazy) array [mx, my] or [n, mx, my]."""
    dtype = _check_dtype(data.dtype, str(file))
    n, frame_shape = _stack_shape(tuple(data.shape), str(file))
    get_fn = (lambda i: data) if len(data.shape) in (2, 4) else (lambda i: data[i])
    meta = {**meta, "shape": [int(s) for s in data.shape], "dtype": dtype.str}
    return FrameReader(str(file), n, frame_shape, dtype, sampling, meta, get_fn, close_fn)


def _sampling_pair(values, where: str) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"{where}: sampling must be one or two positive numbers [Å/pixel], got {values!r}")
    return float(arr[0]), float(arr[1])


def _length_factor(units: Any) -> float | None:
    """Å per ``units``, or None when ``units`` is not a length."""
    if units is None:
        return None
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    key = re.sub(r"[\[\]_\s]", "", str(units)).lower()
    return _ANGSTROM_PER_UNIT.get(key)


def _axes_sampling(scales, units, what: str) -> tuple[tuple[float, float] | None, str]:
    """Sampling [Å] from the last two axes' (scale, units); None and a note when not a length."""
    out = []
    for scale, unit in zip(scales, units):
        factor = _length_factor(unit)
        if factor is None or scale is None or not math.isfinite(float(scale)) or float(scale) <= 0:
            return None, f"{what}: axis units {unit!r} (scale {scale!r}) are not a length; sampling unknown"
        out.append(float(scale) * factor)
    return (out[0], out[1]), f"{what}: scales {list(scales)} {list(units)} converted to Å"


# ---------------------------------------------------------------------------------------------
# formats


#: The first bytes of every .npy file (numpy.lib.format).
_NPY_MAGIC = b"\x93NUMPY"


def _not_npy(file: Path) -> InputError | None:
    """A precise error for a ``.npy`` that does not start with the NumPy magic (text, a pickle,
    anything else), or None when it does."""
    with open(file, "rb") as fh:
        head = fh.read(64)
    if head.startswith(_NPY_MAGIC):
        return None
    expected = (
        "expected the binary .npy format numpy.save writes (it starts with b'\\x93NUMPY'): save the "
        "counts with numpy.save(path, frames)"
    )
    if not head:
        what = "it is empty"
    elif head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"(i", b"cn"):
        what = "it holds a Python pickle, not a NumPy array (frames are never unpickled: unpickling can run code)"
    else:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
            what = f"it holds text ({text[:32]!r}...), e.g. a table written by numpy.savetxt"
        else:
            what = f"it does not start with the .npy signature (first bytes {head[:8]!r})"
    return InputError(f"{file}: cannot read as .npy ({what}); the file is corrupt, truncated or not .npy: {expected}")


def _npy_header(file: Path):
    with open(file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = reader[version](fh)
        return shape, fortran, dtype, fh.tell()


def _open_npy(file: Path, _fmt: str) -> FrameReader:
    try:
        not_npy = _not_npy(file)
        shape, fortran, dtype, offset = (None, None, None, None) if not_npy else _npy_header(file)
    except Exception as exc:
        raise _corrupt(file, ".npy", exc) from None
    if not_npy is not None:
        raise not_npy
    _check_dtype(dtype, str(file))
    n, frame_shape = _stack_shape(tuple(shape), str(file))
    meta = {"format": "npy"}
    if fortran:  # not memory-mappable frame by frame: read it whole
        try:
            data = np.load(file, allow_pickle=False)
        except Exception as exc:
            raise _corrupt(file, ".npy", exc) from None
        return _from_array(file, data, None, meta)
    frame_bytes = int(np.prod(frame_shape)) * dtype.itemsize
    size = file.stat().st_size
    complete = min(n, (size - offset) // frame_bytes) if frame_bytes else n
    fh = open(file, "rb")  # noqa: SIM115 - closed by FrameReader.close

    def get(i):
        if i >= complete:
            raise InputError(
                f"{file}: frame {i} lies beyond the end of the file: the header declares {n} frame(s) "
                f"of {list(frame_shape)} {dtype}, the file ({size} bytes) holds {complete} complete; "
                "it was truncated"
            )
        fh.seek(offset + i * frame_bytes)
        raw = fh.read(frame_bytes)
        if len(raw) != frame_bytes:
            raise InputError(f"{file}: frame {i}: read {len(raw)} of {frame_bytes} bytes; the file shrank")
        return np.frombuffer(raw, dtype=dtype).reshape(frame_shape)

    meta = {**meta, "shape": [int(s) for s in shape], "dtype": dtype.str, "complete_frames": int(complete)}
    return FrameReader(str(file), n, frame_shape, dtype, None, meta, get, fh.close)


def _open_npz(file: Path, _fmt: str) -> FrameReader:
    try:  # the file is opened here: np.load leaves its own handle open when the zip is corrupt
        with open(file, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            keys = list(npz.files)
            if "frames" in keys:
                key = "frames"
            elif "counts" in keys:
                key = "counts"
            elif len([k for k in keys if k != "sampling"]) == 1:
                key = next(k for k in keys if k != "sampling")
            else:
                raise InputError(
                    f"{file}: expected an array named 'frames' or a single array, found keys {keys}; "
                    "save with np.savez(path, frames=stack)"
                )
            for k in (key, "sampling") if "sampling" in keys else (key,):
                _check_dtype(_npz_member_dtype(npz, k), f"{file} array {k!r}")  # objects: never unpickled
            data = npz[key]
            sampling_raw = npz["sampling"] if "sampling" in keys else None
    except InputError:
        raise
    except Exception as exc:
        raise _corrupt(file, ".npz", exc) from None
    sampling = None if sampling_raw is None else _sampling_pair(sampling_raw, f"{file} 'sampling'")
    return _from_array(file, data, sampling, {"format": "npz", "key": key})


def _npz_member_dtype(npz, key: str) -> np.dtype:
    """The dtype in the .npy header of ``key`` inside an open .npz, read without loading it."""
    with npz.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)[2]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)[2]
        raise ValueError(f"unsupported .npy version {version} for array {key!r}")


def _open_mrc(file: Path, _fmt: str) -> FrameReader:
    import mrcfile

    try:
        with mrcfile.open(file, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data)
            vs = mrc.voxel_size
            vx, vy, vz = float(vs.x), float(vs.y), float(vs.z)
            ispg = int(mrc.header.ispg)
    except Exception as exc:
        raise _corrupt(file, "MRC", exc) from None
    # MRC x is the fastest (last) axis, i.e. frame axis y here; MRC y is frame axis x.
    sampling = (vy, vx) if vx > 0 and vy > 0 else None
    meta = {"format": "mrc", "voxel_size_xyz_A": [vx, vy, vz], "ispg": ispg}
    if sampling is None:
        meta["sampling_note"] = "MRC header voxel size is 0 (unset); sampling unknown"
    return _from_array(file, data, sampling, meta)


def _open_rsciio(file: Path, fmt: str) -> FrameReader:
    what = {"dm": "DigitalMicrograph DM3/DM4", "tiff": "TIFF"}[fmt]
    try:
        if fmt == "dm":
            from rsciio.digitalmicrograph import file_reader
        else:
            from rsciio.tiff import file_reader
        signals = file_reader(str(file))
    except Exception as exc:
        _close_files_left_open(exc)
        raise _corrupt(file, what, exc) from None
    if not signals:
        raise InputError(f"{file}: the {what} file holds no image data")
    images = [s for s in signals if np.ndim(s.get("data")) in (2, 3)]
    if not images:
        shapes = [list(np.shape(s.get("data"))) for s in signals]
        _stack_shape(tuple(shapes[0]) if shapes else (), f"{file}", allow_4d=False)  # raises with the shape
    sig = images[0]
    try:
        data = np.asarray(sig["data"])
    except Exception as exc:
        raise _corrupt(file, what, exc) from None
    axes = sig.get("axes", [])
    meta = {"format": fmt, "reader": f"rsciio.{'digitalmicrograph' if fmt == 'dm' else 'tiff'}",
            "axes": [{k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                      for k, v in ax.items()} for ax in axes],
            "n_signals_in_file": len(signals)}  # fmt: skip
    sampling = None
    if len(axes) == data.ndim:
        sampling, note = _axes_sampling(
            [axes[-2].get("scale"), axes[-1].get("scale")], [axes[-2].get("units"), axes[-1].get("units")], what
        )
        meta["sampling_note"] = note
    return _from_array(file, data, sampling, meta)


def _close_files_left_open(exc: BaseException) -> None:
    """Close the files a reader that raised ``exc`` left open: rsciio's TIFF reader opens a
    ``tifffile.TiffFile`` without a context manager (to read lazily) and does not close it when
    it raises (e.g. on an RGB page of a dtype it cannot convert)."""
    import io

    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if type(value).__name__ == "TiffFile" or isinstance(value, io.IOBase):
                with contextlib.suppress(Exception):
                    value.close()
        tb = tb.tb_next


def _open_hdf5(file: Path, dataset: str | None) -> FrameReader:
    import h5py

    try:
        h5 = h5py.File(file, "r")
    except Exception as exc:
        raise _corrupt(file, "HDF5", exc) from None
    try:
        ds, meta, sampling = _pick_dataset(h5, file, dataset)
        shape = tuple(ds.shape)
        _check_dtype(ds.dtype, f"{file}:{ds.name}")
        _stack_shape(shape, f"{file}:{ds.name}")
    except InputError:
        h5.close()
        raise
    except Exception as exc:
        h5.close()
        raise _corrupt(file, "HDF5", exc) from None
    return _from_array(f"{file}:{ds.name}", ds, sampling, meta, close_fn=h5.close)


def _pick_dataset(h5, file: Path, dataset: str | None):
    import h5py

    if dataset is not None:
        obj = h5.get(dataset)
        if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
            return _emd_dataset(obj, file)
        if not isinstance(obj, h5py.Dataset):
            raise InputError(
                f"{file}: no dataset {dataset!r} in the file; datasets: {_list_datasets(h5)}"
            )
        return obj, _plain_meta(obj), _plain_sampling(obj, file)
    groups = h5.get("data")
    emd = []
    if isinstance(groups, h5py.Group):
        emd = [g for g in groups.values() if isinstance(g, h5py.Group) and isinstance(g.get("data"), h5py.Dataset)]
    if len(emd) == 1:
        return _emd_dataset(emd[0], file)
    if len(emd) > 1:
        names = [g.name + "/data" for g in emd]
        raise InputError(f"{file}: EMD file holds {len(emd)} data groups {names}; pick one as {file}:{names[0]}")
    datasets = _list_datasets(h5)
    if len(datasets) == 1:
        obj = h5[datasets[0]]
        return obj, _plain_meta(obj), _plain_sampling(obj, file)
    raise InputError(
        f"{file}: not an EMD 1.0 file (no /data/<name>/data group) and {len(datasets)} datasets "
        f"{datasets[:10]}; name the frames as {file}:/path/to/dataset"
    )


def _list_datasets(h5) -> list[str]:
    import h5py

    out: list[str] = []
    h5.visititems(lambda name, obj: out.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return out


def _plain_meta(ds) -> dict:
    return {"format": "hdf5", "dataset": ds.name}


def _plain_sampling(ds, file: Path) -> tuple[float, float] | None:
    if "sampling" not in ds.attrs:
        return None
    return _sampling_pair(ds.attrs["sampling"], f"{file}:{ds.name} attribute 'sampling'")


def _attr_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _attr_str(value.reshape(-1)[0]) if value.size else None
    return str(value)


def _emd_dataset(group, file: Path):
    """EMD 1.0 (emdatasets.com, NCEM): ``group/data`` with axis vectors ``dim1..dimN``."""
    ds = group["data"]
    meta = {"format": "emd", "dataset": ds.name, "emd_group_type": _attr_str(group.attrs.get("emd_group_type"))}
    nd = ds.ndim
    # the frame's spatial axes: the last two of an image (stack), the scan of a 4D-STEM frame (stack)
    spatial = (nd - 1, nd) if nd <= 3 else (nd - 3, nd - 2)
    dims = [group.get(f"dim{k}") for k in spatial] if nd >= 2 else []
    if len(dims) == 2 and all(d is not None and d.shape and d.shape[0] >= 2 for d in dims):
        steps = [float(d[1] - d[0]) for d in dims]
        units = [_parse_units(d.attrs.get("units")) for d in dims]
        sampling, note = _axes_sampling(steps, units, "EMD")
        meta["dims"] = [{"name": _attr_str(d.attrs.get("name")), "units": u} for d, u in zip(dims, units)]
        meta["sampling_note"] = note
        return ds, meta, sampling
    meta["sampling_note"] = "EMD: no dim vectors for the frame's spatial axes; sampling unknown"
    return ds, meta, None


def _parse_units(value) -> str | None:
    """EMD units attribute (ncempy writes e.g. ``[n_m]``) as a plain string."""
    text = _attr_str(value)
    if text is None:
        return None
    return text.strip()
