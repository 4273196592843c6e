# The two commands of README.md: `make run` and `make test`. Both set up .venv first
# (idempotent: the stamp is rebuilt only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.maskcrypt-installed
# torch first and pinned: pip takes these builds from the local disk; an unpinned
# torch would pull a multi-GB download.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test test-fast lint bench clean-run

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) jobs/select.py

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q --durations=12 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The first tier only: tests that need no Ray (tests/unit), in well under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/masks.py --quick

clean-run:
	rm -rf runs/default
