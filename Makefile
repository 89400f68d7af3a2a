# Two commands on a fresh machine (see README):
#   make run    -> the main job on embedded defaults
#   make test   -> lint + every test (what CI runs)
# Both create .venv and install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the tests and the main job read datasets (CIFAR-10 Parquet etc.); override with TWOHEAD_DATA=...
# Without it the main job downloads CIFAR-10 into ~/.cache/twohead/data (see README, "Data").
SHARED_DATA := $(abspath ../shared/data)
export TWOHEAD_DATA ?= $(if $(wildcard $(SHARED_DATA)/cifar10/train.parquet),$(SHARED_DATA),)
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins the versions the tests ran with (torch 2.14.1 + torchvision 0.29.1 pair with each other)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[ray,tracking,test]"
	touch $(STAMP)

install: $(STAMP)

# data.download=true: a machine without the Parquet files fetches CIFAR-10 once (torchvision, ~170 MB) into
# $$TWOHEAD_DATA or ~/.cache/twohead/data; with them it changes nothing.
run: $(STAMP)
	$(BIN)/python -m rayjobs.search --preset smoke --out runs/smoke-search --set data.download=true

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m rayjobs.bench

clean:
	rm -rf $(VENV) runs
