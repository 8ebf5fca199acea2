# Two commands do all the set-up on a fresh machine (Debian, Python 3.11):
#   make demo   start the service on the demo bundle and post synthetic crane frames to it
#   make test   lint, type-check and run the whole test suite
# Both create .venv and install what is missing; nothing else is needed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := demo-out

DEMO_WORK := /tmp/scrapscan-demo-bundle

.PHONY: demo test lint unit clean demo-bundle

$(PY):
	scripts/make-venv.sh $(PYTHON) $(VENV)

# One stamp per install set; pyproject.toml changing reinstalls.
$(VENV)/.base: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable .
	@touch $@

$(VENV)/.serve: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable '.[serve,cpu]'
	@touch $@ $(VENV)/.base

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable '.[dev]'
	@touch $@ $(VENV)/.base $(VENV)/.serve

demo: $(VENV)/.serve
	$(PY) -m service.demo --out $(DEMO) --frames 3 --seed 4

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: $(VENV)/.dev
	scripts/ensure-test-tools.sh
	$(PY) -m pytest

test: lint unit

# Rebuild the committed demo bundle: train the tiny config on synthetic frames (seeds 100
# and 200, about 7 minutes on 2 cores), evaluate it, train the bed cropper (5 minutes),
# and export both with the report.
demo-bundle: $(VENV)/.dev
	PYTHON=$(PY) benchmarks/train_tiny.sh $(DEMO_WORK)
	$(PY) -m training.bedseg --out $(DEMO_WORK)/bed.pt
	$(PY) -m model_export --checkpoint $(DEMO_WORK)/run/checkpoint.pt \
		--report $(DEMO_WORK)/report/report.json --out models/demo --name demo \
		--version tiny-$$(date -u +%Y%m%d) --bed-model $(DEMO_WORK)/bed.pt --overwrite

clean:
	rm -rf $(VENV) $(DEMO) .mypy_cache .ruff_cache .pytest_cache .hypothesis
