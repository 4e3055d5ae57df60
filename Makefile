# `make test` builds .venv from nothing (CPU torch first, so pip never pulls a CUDA build) and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# PPO against GRPO on easy arithmetic, 3 seeds, 9,600 environment steps each (about 7 minutes on 2 cores):
# runs/compare_arithmetic/report.md. docs/results.md has the same comparison at 12,800 steps.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/agentrl compare --env arithmetic --seeds 3 --budget 9600 --quiet \
		--set env.options.max_value=2 --set env.options.operators=+ --set rollout.max_response_tokens=4 \
		--set rollout.tasks_per_iteration=8 --set rollout.group_size=8 --set rollout.max_concurrent=64 \
		--set optim.actor_lr=1e-3 --set optim.critic_lr=1e-3 --set grpo.kl_beta=0 --set run.checkpoint_every=0

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
