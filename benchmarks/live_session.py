"""The live session under load: sustained ingest and frame-to-posterior latency.

1. Ingest: 256x256 uint16 frames over loopback ZeroMQ into a running session (8 hypotheses of
   cached images); frames/s received and the accounting: every frame sent must be received, and
   every frame received must be scored, coalesced or rejected (zero unaccounted).
2. Latency: frame received -> posterior recorded, p50/p99 over a stream of frames, for 100 and
   1,000 surviving hypotheses (cached 256x256 images), with the per-hypothesis Laplace scorer
   and with the registered-frame fast scorer (inference.scorer).

    .venv/bin/python benchmarks/live_session.py            # full
    .venv/bin/python benchmarks/live_session.py --small    # quick check
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import numpy as np

from forward import InputError
from hypotest.hypothesis import make_hypothesis
from hypotest.live.events import RawFrame, StreamEvent
from hypotest.live.model import beam_key
from hypotest.live.record import load_record
from hypotest.live.runner import LiveSession

SHAPE = (256, 256)
SAMPLING = (0.1, 0.1)  # [Å/pixel]
BEAM = {"energy": 300e3, "dose": 100.0, "sampling": list(SAMPLING), "detector": {"mode": "hrtem"}}


def _library(n: int, seed: int = 0):
    """``n`` distinct synthetic hypotheses and smooth positive images ([H, 256, 256])."""
    from forward import make_specimen

    rng = np.random.default_rng(seed)
    cell = (SHAPE[0] * SAMPLING[0], SHAPE[1] * SAMPLING[1], 5.0)
    hyps = []
    for i in range(n):
        sites = rng.choice(144, size=4, replace=False)  # distinct sites of a 12 x 12 grid (2 Å apart)
        pos = np.column_stack([(sites // 12) * 2.0 + 1.0, (sites % 12) * 2.0 + 1.0, np.full(4, 2.5)])
        hyps.append(make_hypothesis(make_specimen(pos, [6, 8, 14, 42], cell=cell), name=f"synthetic {i}"))
    kx = np.fft.fftfreq(SHAPE[0])[:, None]
    ky = np.fft.fftfreq(SHAPE[1])[None, :]
    low = np.exp(-(kx**2 + ky**2) / (2 * 0.03**2))
    base = np.fft.ifft2(np.fft.fft2(rng.normal(size=SHAPE)) * low).real
    imgs = []
    for i in range(n):
        d = np.fft.ifft2(np.fft.fft2(rng.normal(size=SHAPE)) * low).real
        imgs.append(1.0 + 0.3 * base / base.std() + 0.02 * d / d.std())
    return hyps, np.clip(np.stack(imgs), 0.05, None).astype(np.float32), cell


class CachedImageModel:
    """The benchmark's image model: images given directly, one stack per beam condition, behind the
    interface the live session takes from :class:`hypotest.live.model.ImageModel` (no simulator).

    A beam without images is an error (nothing here can simulate it). ``images_by_beam``: ``[(beam dict, images [H, mx, my])]`` (intensity
    relative to the beam); ``pixel_sampling``: camera pixel [Å]; ``cell``: the shared cell [Å].
    """

    def __init__(self, images_by_beam, *, pixel_sampling, cell):
        if not images_by_beam:
            raise InputError("a cached image model needs at least one (beam, images) pair")
        self._images = {}
        shapes = set()
        for beam, imgs in images_by_beam:
            a = np.asarray(imgs, dtype=np.float32)
            if a.ndim != 3 or not np.all(np.isfinite(a)):
                raise InputError(f"cached images must be finite [H, mx, my], got shape {list(a.shape)}")
            shapes.add(a.shape)
            self._images[beam_key(beam)] = a
        if len(shapes) != 1:
            raise InputError(f"cached image stacks differ in shape: {sorted(shapes)}")
        self._shape = shapes.pop()
        self._sampling = (float(pixel_sampling[0]), float(pixel_sampling[1]))
        self.cell = np.asarray(cell, dtype=np.float64)
        self.settings = {"cached": True}
        self.specimens = [None] * self._shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape[1:]

    @property
    def pixel_sampling(self) -> tuple[float, float]:
        return self._sampling

    def frame_shape_of(self, beam: dict) -> tuple[int, ...]:
        return tuple(self._shape[1:])

    def pixel_area_of(self, beam: dict) -> float:
        return float(self._sampling[0] * self._sampling[1])

    def model_layout(self, beam: dict, frame: np.ndarray) -> np.ndarray:
        return np.asarray(frame)

    frame_layout = model_layout
    virtual_image = model_layout

    def prepare(self, beams) -> None:
        for b in beams:
            self.images(b)

    def images(self, beam: dict) -> np.ndarray:
        try:
            return self._images[beam_key(beam)]
        except KeyError:
            raise InputError(
                "no images for this beam condition; the benchmark gives images for its one beam only"
            ) from None

    def add(self, specimen) -> int:
        raise InputError("the benchmark's image model cannot add hypotheses (no simulator)")


class _Frames:
    """A frame source that hands out pre-drawn frames, ``per_poll`` at a time."""

    name = "benchmark frames"

    def __init__(self, frames, per_poll=1):
        self.frames, self.k, self.per_poll = frames, 0, per_poll

    def poll(self, timeout):
        if self.k >= len(self.frames):
            return [StreamEvent("end", time.time())]
        out = [RawFrame(self.k + j, time.time(), f) for j, f in enumerate(self.frames[self.k : self.k + self.per_poll])]
        self.k += len(out)
        return out

    def apply_beam(self, beam):
        return False

    def close(self):
        pass


def ingest(n_frames: int, rate: float | None) -> dict:
    from hypotest.live.zmqstream import ZmqSource, send_frames

    hyps, imgs, cell = _library(8)
    model = CachedImageModel([(BEAM, imgs)], pixel_sampling=SAMPLING, cell=cell)
    lam = imgs[3] * BEAM["dose"] * SAMPLING[0] * SAMPLING[1]
    frames = np.random.default_rng(1).poisson(lam, (64, *SHAPE)).astype(np.uint16)
    with tempfile.TemporaryDirectory() as d:
        src = ZmqSource("tcp://127.0.0.1:*", end_on_sender_end=True)
        s = LiveSession(d, hypotheses=hyps, model=model, source=src, candidate_beams=[("only", BEAM)], beam=BEAM,
                        config={"library": "synthetic", "source": {"kind": "zmq"}}, stop_on_decision=False)  # fmt: skip
        s.start()
        t0 = time.perf_counter()
        rep = send_frames((frames[k % 64] for k in range(n_frames)), src.address, rate_hz=rate, beam=BEAM,
                          sampling=SAMPLING)  # fmt: skip
        s.wait(600)
        elapsed = time.perf_counter() - t0
        s.stop()
        rec = load_record(d)
        fates = {}
        for f in rec.frames:
            fates[f["fate"]] = fates.get(f["fate"], 0) + 1
        received = len(rec.frames)
        ingest_s = rec.frame_lines[-1]["t_received"] - rec.frame_lines[0]["t_received"] if received > 1 else float("nan")
    return {"sent": rep.sent, "received": received, "fates": fates, "unaccounted": rep.sent - sum(
        v for k, v in fates.items() if k in ("scored", "coalesced", "rejected")), "ingest_fps": (received - 1) / ingest_s,
        "steps": len(rec.steps), "elapsed_s": elapsed}  # fmt: skip


def latency(n_hyp: int, n_frames: int, scorer: str) -> dict:
    hyps, imgs, cell = _library(n_hyp)
    model = CachedImageModel([(BEAM, imgs)], pixel_sampling=SAMPLING, cell=cell)
    lam = imgs[n_hyp // 2] * BEAM["dose"] * SAMPLING[0] * SAMPLING[1]
    frames = np.random.default_rng(2).poisson(lam, (n_frames, *SHAPE)).astype(np.uint16)
    with tempfile.TemporaryDirectory() as d:
        s = LiveSession(d, hypotheses=hyps, model=model, source=_Frames(list(frames)), candidate_beams=[("only", BEAM)],
                        beam=BEAM, config={"library": "synthetic", "source": {"kind": "bench"}},
                        stop_on_decision=False, scorer=scorer)  # fmt: skip
        s.run_sync()
        rec = load_record(d)
    tot = np.array([x["latency_s"]["total"] for x in rec.steps[1:]])  # the first step pays for compilation
    sc = np.array([x["latency_s"]["score"] for x in rec.steps[1:]])
    return {"hypotheses": n_hyp, "scorer": scorer, "frames": len(tot), "p50_s": float(np.percentile(tot, 50)),
            "p99_s": float(np.percentile(tot, 99)), "score_p50_s": float(np.percentile(sc, 50))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="fewer frames (a quick check)")
    args = ap.parse_args()
    n = 400 if args.small else 4000
    print("ingest: 256x256 uint16 over loopback ZeroMQ into a running session (8 hypotheses)")
    print(f"{'rate':>10} {'sent':>6} {'received':>9} {'unaccounted':>12} {'ingest fps':>11} {'steps':>6}  fates")
    for rate in (200.0, None):
        r = ingest(n, rate)
        print(f"{rate or 'unpaced':>10} {r['sent']:>6} {r['received']:>9} {r['unaccounted']:>12} {r['ingest_fps']:>11.0f} "
              f"{r['steps']:>6}  {r['fates']}")  # fmt: skip
    print("\nframe -> posterior latency (256x256 frames, cached images; first step excluded: compilation)")
    print(f"{'hypotheses':>10} {'scorer':>8} {'frames':>7} {'p50 [s]':>8} {'p99 [s]':>8} {'score p50 [s]':>14}")
    runs = [(100, "laplace", 4 if args.small else 10), (100, "fast", 6 if args.small else 40),
            (1000, "fast", 6 if args.small else 40)]  # fmt: skip
    for h, scorer, nf in runs:
        r = latency(h, nf, scorer)
        print(f"{h:>10} {scorer:>8} {r['frames']:>7} {r['p50_s']:>8.3f} {r['p99_s']:>8.3f} {r['score_p50_s']:>14.3f}")


if __name__ == "__main__":
    main()
