# gdmd's two commands:
#   make demo   create .venv if missing, install torch and gdmd, run the demo
#   make test   the same set-up, then the test suite (CPU, offline)
# The install step runs again only when pyproject.toml changes (a stamp file in .venv).

PYTHON ?= python3
# Nothing here needs the Hugging Face Hub; fail fast instead of retrying DNS lookups.
export HF_HUB_OFFLINE ?= 1
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.gdmd-installed

# The demo's main job: train (or reuse) the toy teacher and reward, distil the 4-step GDMD
# student, evaluate it next to the teacher and write runs/toy-gdmd/comparison.png.
# --resume auto makes a second `make demo` reuse the finished run instead of refusing it.
DEMO_CMD ?= $(BIN)/gdmd run recipes/toy/gdmd.toml --resume auto && \
	$(BIN)/gdmd eval runs/toy-gdmd --teacher

# The test command. The fixture plugin distributions (tests/fixtures/) are installed by the
# tests themselves, with pip, into a temporary directory (see tests/foundation/test_distributions.py).
TEST_CMD ?= HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

.PHONY: demo test install lint clean-venv benchmark bench-engine

demo: install
	$(DEMO_CMD)

test: install
	$(TEST_CMD)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The first-party plugin distributions (plugins/*/), installed like any third party's so
# `gdmd list-plugins` shows them by default; their tests run with the core's.
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))

# torch first, so pip does not pick a torch build for gdmd's dependencies on its own.
$(STAMP): pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,plots]' \
		$(foreach p,$(PLUGINS),-e $(p))
	touch $@

# Every toy recipe over three seeds; rewrites docs/benchmarks/ and the toy table in
# docs/benchmarks.md (about an hour on 2 cores).
benchmark: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/toy.py

# Loop overhead, GDMD step cost and peak memory on the tiny family (a few minutes).
bench-engine: install
	$(BIN)/python benchmarks/engine.py

lint: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'ruff>=0.5'
	$(BIN)/python -m ruff check gdmd tests plugins

clean-venv:
	rm -rf $(VENV)
