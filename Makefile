# spike forensics - `make demo` sets up and runs the main job, `make test` sets up and runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo report test bench browser clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,app]'
	touch $(STAMP)

browser:
	@bash scripts/install-browser.sh

# the main job: record the sample runs if absent, analyze them, print the report, open the app
demo: report
	$(VENV)/bin/forensics app sample_runs

report: setup
	$(VENV)/bin/forensics demo --if-missing sample_runs
	$(VENV)/bin/forensics analyze sample_runs
	-$(VENV)/bin/forensics report sample_runs

test: setup browser
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
