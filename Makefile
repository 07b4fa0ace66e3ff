# FRDM: `make demo` restores the bundled sample shot; `make test` runs the tests. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/frdm restore samples/train_robbery/train_robbery.####.exr out/demo/train_robbery.####.exr \
		--preset samples/train_robbery/shot.json --contact-sheet out/demo/before_after.png
	@echo "restored frames: out/demo/  before/after sheet: out/demo/before_after.png"

test: setup
	$(PY) -m pytest -q -rs

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/run_all.py
