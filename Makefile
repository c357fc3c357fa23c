# spike forensics - `make demo` sets up and runs the main job, `make test` sets up and runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
APP := $(VENV)/.installed-app
DEV := $(VENV)/.installed-dev

.PHONY: setup setup-app demo report test bench browser clean-venv

# the demo needs the core and the app; the suite also needs the dev extras (pytest, Lightning,
# transformers, Playwright). torch goes first, from its own wheel, so no CUDA build is pulled in.
$(BASE):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	touch $(BASE)

$(APP): $(BASE) pyproject.toml
	$(PY) -m pip install -q -e '.[app]'
	touch $(APP)

$(DEV): $(BASE) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,app]'
	touch $(DEV)

setup-app: $(APP)
setup: $(DEV)

browser:
	@bash scripts/install-browser.sh

# the main job: record the sample runs if absent, analyze them, print the report, open the app
demo: report
	$(VENV)/bin/forensics app sample_runs

report: setup-app
	$(VENV)/bin/forensics demo --if-missing sample_runs
	# exit 4: some spike is not_analyzed — small_batch's spikes past its capture budget (max_spikes=2)
	$(VENV)/bin/forensics analyze sample_runs || [ $$? -eq 4 ]
	-$(VENV)/bin/forensics report sample_runs

test: setup browser
	$(PY) -m ruff check forensics
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
