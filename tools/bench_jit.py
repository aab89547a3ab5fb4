"""Numba start-up cost: compile every kernel of the numba backend (cold: its cache removed)
and then load them from the cache (warm), each in a fresh process.

    python tools/bench_jit.py [--model PATH]

Each run imports qwen_np, loads the model with backend="numba" and generates 2 tokens; it
reports the time to the first token and, separately, the model load (GGUF conversion).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = r"""
import sys, time
t0 = time.perf_counter()
import qwen_np
t1 = time.perf_counter()
m = qwen_np.load(sys.argv[1], backend="numba")
t2 = time.perf_counter()
m.generate([1, 2, 3], max_new_tokens=2, stop_ids=[])
t3 = time.perf_counter()
print(f"import {t1 - t0:.2f} s, load {t2 - t1:.2f} s, first 2 tokens (JIT or cache) {t3 - t2:.2f} s")
"""


def main():
    sys.path.insert(0, os.path.join(HERE, ".."))
    import qwen_np.backends.numba.backend as nb
    from qwen_np.apps.fetch import default_model_path
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model_path())
    a = ap.parse_args()
    cache = os.path.join(os.path.dirname(nb.__file__), "__pycache__")
    removed = 0
    for f in glob.glob(os.path.join(cache, "*.nb[ic]")):      # every Numba kernel of the package
        os.remove(f)
        removed += 1
    print(f"removed {removed} cached kernel files from {cache}")
    for label in ("cold (compiles)", "warm (cache hit)"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", RUN, a.model], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        print(f"{label}: {r.stdout.strip()}; process total {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
