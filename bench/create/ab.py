"""Compare two checkouts of vmmgr on create -> running, in one run: one vmmgrd from this
checkout (A) and one from ``OTHER`` (B, e.g. ``git worktree add --detach /tmp/old HEAD~1``),
creates alternating A, direct, B, direct (and B first every other round). Separate runs of
``run.py`` differ by more than most changes do on a shared host; here both sides see the same
host at the same moments. Prints both p50s, their ratio, and each against the direct calls
(higher than run.py's: two daemons share the host's caches here; B/A is the figure to read).

    PYTHONPATH=. .venv/bin/python bench/create/ab.py OTHER [--runs 400]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402 - this directory's run.py: one setup for both benchmarks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", type=Path, help="the checkout to compare with (B)")
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[2]
    via: list[list[float]] = [[], []]
    direct: list[float] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="vmmgr-bench-ab-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        uri, base = bench.prepare(tmp, args.runs)
        sides = [
            stack.enter_context(bench.vmmgrd(tmp / "a", uri, base, here)),
            stack.enter_context(bench.vmmgrd(tmp / "b", uri, base, args.other.resolve())),
        ]
        direct_side = bench.Direct(uri, tmp, base)
        stack.callback(direct_side.close)
        for n in range(args.runs):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                via[i].append(bench.create_via(sides[i][1], f"v{n}"))
                direct.append(direct_side.create())
    a, b, d = (statistics.median(x) * 1000 for x in (*via, direct))
    print(f"create->running, {args.runs} runs each, alternating, libvirt test driver")
    print(f"  A ({here}):  p50 {a:6.2f} ms  ({a / d:.2f}x direct)")
    print(f"  B ({args.other}):  p50 {b:6.2f} ms  ({b / d:.2f}x direct)")
    print(f"  direct libvirt calls:  p50 {d:6.2f} ms")
    print(f"  B/A: {b / a:.3f}")


if __name__ == "__main__":
    main()
