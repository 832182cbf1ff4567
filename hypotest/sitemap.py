"""The site map of a field of view: the frame with every scored site marked by its type and
decision (PNG, matplotlib's Agg backend; no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["write_site_map", "site_map_png"]


def site_map_png(frame, result: dict) -> bytes:
    """PNG bytes: ``frame [nx, ny]`` (x to the right, as the arrays are indexed [x, y]) with the
    sites of ``result`` (:func:`hypotest.fieldofview.score_field_of_view`): host sites as small
    grey dots, decided defects as filled circles coloured by type, undecided non-host sites as
    open circles, unexplained sites as red crosses, off-specimen sites as black squares."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = np.asarray(frame, float)
    fig, ax = plt.subplots(figsize=(7, 7 * img.shape[1] / img.shape[0] + 0.6), dpi=110)
    lo, hi = np.nanpercentile(img, [0.5, 99.5])
    ax.imshow(img.T, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    sites = result["sites"]
    names = sorted({s["best_name"].split(" @")[0] for s in sites if not s["is_host"]})
    cmap = plt.get_cmap("tab10")
    colour = {n: cmap(i % 10) for i, n in enumerate(names)}
    host = [s for s in sites if s["is_host"] and s["status"] == "ok"]
    if host:
        ax.scatter([s["x_px"] for s in host], [s["y_px"] for s in host], s=8, c="tab:cyan", lw=0, label="host")
    for n in names:
        dec = [s for s in sites if not s["is_host"] and s["status"] == "ok" and s["best_name"].split(" @")[0] == n]
        d = [s for s in dec if s["decided"]]
        u = [s for s in dec if not s["decided"]]
        if d:
            ax.scatter([s["x_px"] for s in d], [s["y_px"] for s in d], s=90, color=colour[n], edgecolor="w",
                       label=f"{n} ({len(d)} decided)")  # fmt: skip
        if u:
            ax.scatter([s["x_px"] for s in u], [s["y_px"] for s in u], s=90, facecolor="none", edgecolor=colour[n],
                       lw=1.5, label=f"{n}? ({len(u)} undecided)")  # fmt: skip
    for status, marker, col in (("unexplained", "x", "red"), ("off_specimen", "s", "black")):
        xs = [s for s in sites if s["status"] == status]
        if xs:
            ax.scatter([s["x_px"] for s in xs], [s["y_px"] for s in xs], s=50, marker=marker, color=col,
                       label=f"{status.replace('_', ' ')} ({len(xs)})")  # fmt: skip
    cal = result["lattice"]["calibration"]
    ax.set_title(f"{len(sites)} sites; pixel {cal['pixel_x_A']:.4f} x {cal['pixel_y_A']:.4f} Å, "
                 f"rotation {cal['rotation_deg']:.2f}°", fontsize=9)  # fmt: skip
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_site_map(path, frame, result: dict) -> Path:
    """Write :func:`site_map_png` to ``path`` atomically."""
    from hypotest.outputs import write_file_atomic

    p = Path(path)
    write_file_atomic(p, site_map_png(frame, result))
    return p
