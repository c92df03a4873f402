# A newcomer's two commands:
#   make run    set everything up, convert CIFAR-10, train the write-up's recipe
#   make test   set everything up, run the test suite (make test-fast: without the tests marked slow)
# Variables: CIFAR10=path/to/cifar-10-python.tar.gz (else the official download),
#            DATA=data/cifar10, RUN=runs/blog, ARGS="extra alexpipe train options"

PYTHON ?= python3
VENV ?= .venv
DATA ?= data/cifar10
RUN ?= runs/blog
CIFAR10 ?=
ARGS ?=
BIN := $(VENV)/bin
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev

.PHONY: setup system run convert train test test-fast bench gpu-check clean

setup: system $(BIN)/alexpipe

# FFCV compiles against OpenCV and libjpeg-turbo: install them when we can (root), else say what is missing.
system:
	@if pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	else \
		echo "FFCV needs: sudo apt-get install $(APT_PACKAGES) (then run make again)"; exit 1; \
	fi

$(BIN)/alexpipe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q 'torch==2.14.1' 'torchvision==0.29.1'  # the versions this project is tested with
	$(BIN)/pip install -q -e '.[all]'
	@touch $@

$(DATA)/manifest.json: | $(BIN)/alexpipe
	$(BIN)/alexpipe convert --out $(DATA) $(if $(CIFAR10),--source $(CIFAR10),--download)

convert: setup $(DATA)/manifest.json

train: convert
	$(BIN)/alexpipe train --data $(DATA) --out $(RUN) $(if $(wildcard $(RUN)/last.pt),--resume) $(ARGS)

run: train

test: setup
	$(BIN)/python -m pytest -q

# The edit-test loop: everything not marked slow (no real data, compiled loaders, training runs, subprocesses),
# spread over the usable cores (at most 4) with pytest-xdist.
FAST_JOBS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -n $(FAST_JOBS)

bench: convert
	$(BIN)/alexpipe bench all --data $(DATA) --out bench/results/$$(hostname)

# On a fresh GPU machine with torch but no pip or network: runs from this source tree with the installed
# python3 (no venv), writes its figures into $$OUT or bench/results/gpu-check-<host>. See README, "On a GPU".
gpu-check:
	$(PYTHON) bench/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
