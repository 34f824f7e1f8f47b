"""A loop of one hot path, for a sampling profiler (py-spy): ``supervise`` or ``raw``.

py-spy record -r 2000 -f raw -o out.txt -- .venv/bin/python benchmarks/_loop.py supervise 200000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import overhead


def main() -> None:
    which, calls = sys.argv[1], int(sys.argv[2])
    fn = overhead.supervised_path() if which == "supervise" else overhead.raw_span_path()[0]
    for _ in range(calls):
        fn(overhead.TASK)


if __name__ == "__main__":
    main()
