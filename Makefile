# Two commands on a fresh machine with Python 3.11+:  make run  ·  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test install browser clean bench ci

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# Migrations, demo data (once), embedded Redis, an RQ worker with its scheduler, the demo lab,
# and the web server. Ctrl-C stops all of it.
run: $(STAMP)
	$(BIN)/python -m portal.devserver

# Debian's Chromium for the browser tests; skipped with a note where it cannot be installed.
browser:
	@bash .ci/ensure-chromium

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/board.py

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) instance .pytest_cache
