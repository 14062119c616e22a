# Two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install viewer run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The pinned OHIF build (npm registry, integrity-checked, cached); never committed.
VIEWER := viewer_static/dist/.ohif-version
$(VIEWER): scripts/fetch-viewer.py
	$(PYTHON) scripts/fetch-viewer.py
	touch $@

viewer: $(VIEWER)

install: $(STAMP) $(VIEWER)

run: $(STAMP) $(VIEWER)
	$(BIN)/dicomweb-server serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dicomweb_server tests benchmarks
	$(BIN)/ruff format --check dicomweb_server tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(VIEWER)
	scripts/ensure-postgres.sh
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info viewer_static/dist test-artifacts
