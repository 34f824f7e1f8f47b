"""Summarise a py-spy ``--format raw`` profile: inclusive and self share of each function under a
root frame (the hot path's entry), so a profile can be written down as "where the time goes".

    .venv/bin/python benchmarks/_stacks.py out.txt sync_wrapper [top]
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_LINE = re.compile(r" \(([^:]+):\d+\)$")


def _name(frame: str) -> str:
    """``func (path/file.py:12)`` → ``func (file.py)``: lines of one function merged."""
    match = _LINE.search(frame)
    if not match:
        return frame
    return f"{frame[: match.start()]} ({match.group(1).rsplit('/', 1)[-1]})"


def summarise(path: str, root: str, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            for i, frame in enumerate(frames):
                if root in frame:
                    frames = [_name(x) for x in frames[i:]]
                    break
            else:
                continue
            n = int(count)
            total += n
            for name in set(frames):
                inclusive[name] += n
            own[frames[-1]] += n
    out = [f"{total} samples under {root}", "", "inclusive %  self %  function"]
    for name, n in inclusive.most_common(top):
        out.append(f"{100 * n / total:10.1f}  {100 * own[name] / total:6.1f}  {name}")
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30))
