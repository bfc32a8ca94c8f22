# Fresh machine: `make demo` (install, train and score the demo gallery) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BEHOLDER := $(VENV)/bin/beholder
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean default-model bench-gpu

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet -c .ci/constraints.txt -e '.[dev]'
	touch $(STAMP)

demo/gallery/labels.csv: | $(STAMP)
	$(BEHOLDER) demo demo/gallery --count 400

# technical=off: the demo's panoramas are drawn, not photographed; the technical checks are
# calibrated on photos and would call their smooth skies camera shake
demo: $(STAMP) demo/gallery/labels.csv
	$(BEHOLDER) train experiment=demo trainer.enable_progress_bar=false
	$(BEHOLDER) predict ckpt=$$(ls -td outputs/demo/*/checkpoints/best.ckpt | head -1) \
		gallery=demo/gallery output=outputs/demo/scored technical=off trainer.enable_progress_bar=false

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

default-model: $(STAMP)
	$(PY) bench/default_model.py --oasis ../shared/data/oasis

# bench-quality, bench-throughput, bench-faults, bench-similar, bench-personal, bench-library,
# bench-scale, bench-technical: python bench/<name>.py (each writes its rows into bench/RESULTS.md)
bench-%: $(STAMP)
	$(PY) bench/$*.py

bench-gpu: $(STAMP)
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) outputs demo .pytest_cache
