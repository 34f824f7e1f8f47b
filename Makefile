# Two commands do all set-up on a fresh machine (README): `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
QUICKSTART_ARGS ?=
LEARNING_ARGS ?=

.PHONY: quickstart learning test lint format bench soak clean

quickstart:
	@scripts/bootstrap.sh quickstart
	$(PY) -m atlas_middleware.cli quickstart $(QUICKSTART_ARGS)

# Generate tasks, train the teacher (LoRA SFT warm-up, then GRPO), evaluate it held out and draw
# the learning curve; resumable (rerun to continue). docs/learning.md has the measured time.
# LEARNING_ARGS="--public svamp.jsonl" adds public word problems (atlas tasks import).
learning:
	@scripts/bootstrap.sh quickstart
	@scripts/bootstrap.sh vllm
	nice -n 10 $(PY) -m atlas_middleware.cli learn --out atlas-learn --curve --grpo-steps 40 $(LEARNING_ARGS)

test:
	@scripts/bootstrap.sh dev
	@scripts/bootstrap.sh vllm
	@scripts/bootstrap.sh phoenix
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	@scripts/bootstrap.sh dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/lint_imports.py
	$(PY) scripts/typecheck.py

format:
	@scripts/bootstrap.sh dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Each benchmark prints its goals (MET / NOT MET); they are printed together again at the end.
bench:
	@scripts/bootstrap.sh dev
	@rm -rf .atlas/bench-goals
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/overhead.py
	@scripts/bootstrap.sh vllm
	$(PY) benchmarks/train.py
	@echo "== goals =="; cat .atlas/bench-goals/*.txt 2>/dev/null || true

# Long fault-injection variants and the load soak (docs/reliability.md); several minutes.
soak:
	@scripts/bootstrap.sh dev
	$(PY) -m pytest -m soak tests/reliability -q -s
	$(PY) benchmarks/soak.py

clean:
	rm -rf $(VENV) .atlas .pytest_cache .ruff_cache .mypy_cache build/typecheck
