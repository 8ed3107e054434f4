"""Two builds through one benchmark at the same moment: A/B figures a drifting VM cannot skew.

On a VM whose speed moves by a third within minutes, runs made one after another cannot show
a change of a few per cent. Two processes sharing the same CPUs at the same moment see the
same speed, so the ratio of their CPU per lead holds even when the absolute figures move.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def figures(output: str, pattern: re.Pattern[str], root: Path) -> list[float]:
    """The numbers `pattern`'s groups capture in one run's output."""
    match = pattern.search(output)
    if match is None:
        raise RuntimeError(f"the run for {root} printed no figures ({pattern.pattern}):\n{output[-2000:]}")
    return [float(group) for group in match.groups()]


def side_by_side(module: str, args: list[str], other: Path, rounds: int, pattern: re.Pattern[str]) -> None:
    """Run `python -m module args --hub-root X` for `other` (A) and this checkout (B) at once,
    `rounds` times; print what `pattern` captures (summed: CPU per lead) and B/A."""
    ratios: list[float] = []
    print(f"A = {other}, B = {HERE}: {module} {' '.join(args)}, both at the same time")
    for index in range(1, rounds + 1):
        runs = [
            (
                root,
                subprocess.Popen(
                    [sys.executable, "-m", module, *args, "--hub-root", str(root)],
                    cwd=HERE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
            for root in (other, HERE)
        ]
        (a, b) = (figures(proc.communicate(timeout=1800)[0], pattern, root) for root, proc in runs)
        ratio = sum(b) / sum(a)
        ratios.append(ratio)
        shown = " + ".join
        print(
            f"round {index}  A {shown(f'{x:.3f}' for x in a)} ms  B {shown(f'{x:.3f}' for x in b)} ms"
            f"  B/A {ratio:.3f}"
        )
    print(f"B/A: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
