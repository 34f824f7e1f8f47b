"""Summarise a py-spy ``--format raw`` profile: inclusive and self share of each function under a
root frame (the hot path's entry), so a profile can be written down as "where the time goes";
or, for a collector profile (``benchmarks/ingest.py --profile``), its on-CPU samples by stage.

    .venv/bin/python benchmarks/_stacks.py out.txt sync_wrapper [top]
    .venv/bin/python benchmarks/_stacks.py collector.txt --collector
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


# Leaf frames where a collector thread waits (idle pool workers, the event loop's select, a
# query's answer): left out, so the shares are of CPU time.
_WAITS = ("_worker", "Condition.wait", "EpollSelector.select", "Connection.wait", "Event.wait")
_STAGES = (
    ("OTLP protobuf decode", "decode_protobuf"),
    ("redaction", "redact ("),
    ("JSON encoding (span_rows)", "span_rows"),
    ("COPY of the spans (client side)", "_copy_spans"),
    ("sessions: derivation", "derive_session_updates"),
    ("sessions: drift checks", "judge"),
    ("sessions: upsert, prior state, histories (client side)", "_apply_session_updates"),
    ("transaction and pool (BEGIN, COMMIT, connection check)", "_transaction"),
    ("HTTP receive, asyncio", "run_forever"),
)


def collector_stages(path: str) -> str:
    counts: Counter[str] = Counter()
    total = waiting = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            if any(w in stack.rsplit(";", 1)[-1] for w in _WAITS):
                waiting += n
                continue
            total += n
            stage = next((name for name, key in _STAGES if key in stack), "other")
            counts[stage] += n
    out = [f"{total} on-CPU samples ({waiting} waiting left out)", "", "| stage | share |"]
    out.append("|---|---|")
    for name in [*(name for name, _ in _STAGES), "other"]:
        out.append(f"| {name} | {100 * counts[name] / max(total, 1):.0f}% |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[2] == "--collector":
        print(collector_stages(sys.argv[1]))
    else:
        print(summarise(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30))
