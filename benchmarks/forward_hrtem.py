"""HRTEM half of the forward-model benchmark; kept as a shortcut for ``forward_vs_abtem.py``.

    .venv/bin/python benchmarks/forward_hrtem.py [--repeats 5] [--small] [--profile]

is ``forward_vs_abtem.py --only hrtem,phonons`` with the same options (see that script).
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--only", "hrtem,phonons", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).with_name("forward_vs_abtem.py")), run_name="__main__")
