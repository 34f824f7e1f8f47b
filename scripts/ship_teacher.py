"""Ship the teacher an ``atlas learn`` run trained as the package's default (``teacher="embedded"``).

    python scripts/ship_teacher.py atlas-learn

Copies the run's adapter into ``atlas_middleware/data/teacher/`` with its provenance card
(``atlas-teacher.json``: recipe, data seed, commit) extended by the run's held-out results, so the
figures travel with the weights. The run must have finished its evaluation (``eval.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "atlas_middleware" / "data" / "teacher"
FILES = ("adapter_config.json", "adapter_model.safetensors")


def results(result: dict) -> dict:
    """The held-out figures of one evaluation (eval.json / public.json), compactly."""
    sys.path.insert(0, str(ROOT))
    from atlas_middleware.learning import paired_difference

    by: dict[str, dict[str, bool]] = {}
    for o in result["outcomes"]:
        by.setdefault(o["condition"], {})[o["task_id"]] = o["correct"]
    ids = sorted(next(iter(by.values())))
    names = list(by)
    pairs = [(names[0], n) for n in names[1:]]
    if "student + teacher" in by and "student + trained teacher" in by:
        pairs.append(("student + teacher", "student + trained teacher"))
    differences = {}
    for a, b in pairs:
        d = paired_difference([by[a][i] for i in ids], [by[b][i] for i in ids])
        differences[f"{b} vs {a}"] = {k: round(v, 4) for k, v in d.items()}
    return {
        "tasks": len(ids),
        "accuracy": {
            s["condition"]: {
                "accuracy": round(s["accuracy"], 4),
                "ci95": [round(s["ci_low"], 4), round(s["ci_high"], 4)],
            }
            for s in result["stats"]
        },
        "paired_differences": differences,
        "validation": result.get("validation"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the atlas learn --out folder")
    args = parser.parse_args()
    adapter = args.run / "adapter"
    card_path = adapter / "atlas-teacher.json"
    missing = [p for p in (*(adapter / f for f in FILES), card_path, args.run / "eval.json")]
    missing = [p for p in missing if not p.exists()]
    if missing:
        print(f"ship_teacher: not a finished atlas learn run: {missing[0]} is missing")
        return 2
    card = json.loads(card_path.read_text())
    card["held_out"] = {"test_split": results(json.loads((args.run / "eval.json").read_text()))}
    public = args.run / "public.json"
    if public.exists():
        data = json.loads(public.read_text())
        card["held_out"]["public"] = {"source": data.get("source"), **results(data)}
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(adapter / name, TARGET / name)
    (TARGET / "atlas-teacher.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum((TARGET / f).stat().st_size for f in FILES) / 1e6
    print(f"shipped {adapter} → {TARGET} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
