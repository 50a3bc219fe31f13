# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
# test processes (pytest-xdist): the integration tests mostly wait on brokers and worker
# processes (one process keeps 0.84 of a core busy), so two fit a 2-core machine
TEST_WORKERS ?= 2
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install lint schemas bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/segmenter demo $(DEMO_ARGS)

test: $(STAMP)
	@sh scripts/test-deps.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load --maxschedchunk 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check stream_app tests bench

schemas: $(STAMP)
	$(BIN)/segmenter schemas

bench: $(STAMP)
	$(BIN)/segmenter bench

clean:
	rm -rf $(VENV) segmenter-data test-artifacts
