"""RIM rewards with a third-party judge plugin (the ``units`` judge and verifier of this folder).

    pip install ./examples/custom_judge_plugin          # registers the atlas_middleware entry point
    python examples/custom_judge_plugin/main.py         # the embedded SmolLM2 judges, offline
    python examples/custom_judge_plugin/main.py --judge-model openai/gpt-4o-mini

Nothing here imports the plugin: atlas finds it through its entry point, like the built-in
judges. ``RIMReward(judges=["accuracy", "units"])`` then asks the judge model for the ``units``
rubric next to the built-in ones, and the plugin's ``units`` verifier decides ``accuracy`` in
code whenever the reference is a quantity with a unit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from atlas_middleware import plugins
from atlas_middleware.models import ChatModel, build_model
from atlas_middleware.rim import Reward, RIMReward

JUDGE = "units"
# (task, answer to judge, reference). The verifier converts units: 4200 m is 4.2 km, 2.25 h is
# 135 min; a bare number gets half marks, a wrong quantity none.
CASES: list[tuple[str, str, str]] = [
    ("A runner covers 4.2 km. How far is that in metres?", "4.2 km is 4200 m.", "4200 m"),
    ("A runner covers 4.2 km. How far is that in metres?", "4200", "4200 m"),
    ("A film lasts 2 h 15 min. How long is it?", "It lasts 2.25 h.", "135 min"),
    ("A bag holds 1.5 kg of rice. How many grams is that?", "1.5 kg = 150 g", "1500 g"),
]


class PluginMissing(RuntimeError):
    pass


def require_plugin() -> None:
    available = plugins.judges()  # loads every entry point of the atlas_middleware group
    if JUDGE not in available:
        raise PluginMissing(
            f"no '{JUDGE}' judge is registered (judges: {', '.join(available)}); install the "
            "plugin first: pip install ./examples/custom_judge_plugin"
        )


def make_reward(model: ChatModel, *, max_tokens: int = 96) -> RIMReward:
    """A RIM reward with the built-in accuracy judge and the plugin's units judge."""
    require_plugin()
    # verifiers=None (the default): the plugins' verifiers, so the units verifier takes part.
    return RIMReward(model, judges=["accuracy", JUDGE], samples=1, max_tokens=max_tokens)


def run(
    model: ChatModel, cases: Sequence[tuple[str, str, str]] = CASES, *, max_tokens: int = 96
) -> list[Reward]:
    """Judge every case, print one line each, and return the rewards."""
    rim = make_reward(model, max_tokens=max_tokens)
    rewards = []
    for task, answer, reference in cases:
        reward = rim.evaluate_sync(task, answer, reference)
        rewards.append(reward)
        decided = reward.verifier["name"] if reward.verifier else "judge model"
        per_judge = ", ".join(
            f"{name} {result.score:.2f}" if result.score is not None else f"{name} failed"
            for name, result in reward.judges.items()
        )
        score = f"{reward.score:.2f}" if reward.score is not None else "-"
        print(f"{answer!r} (reference {reference}): reward {score} [{per_judge}]")
        print(f"  accuracy decided by: {decided}")
    return rewards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge-model", default="embedded", help="RIM's judge (a model spec)")
    parser.add_argument("--cases", type=int, default=len(CASES), help="how many cases to judge")
    parser.add_argument("--max-tokens", type=int, default=96, help="judge reply length")
    parser.add_argument("--json", action="store_true", help="also print each reward payload")
    args = parser.parse_args(argv)
    try:
        require_plugin()  # before loading any model
        rewards = run(
            build_model(args.judge_model), CASES[: args.cases], max_tokens=args.max_tokens
        )
    except PluginMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for reward in rewards:
            print(json.dumps(reward.to_payload(include_replies=False)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
