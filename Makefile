# protege — the two commands that matter: `make demo` and `make test`. Both run `setup` first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.protege-installed
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test test-fast bench lint fmt clean browser

setup: $(STAMP)

# A CUDA torch already on the machine is reused (the venv then sees system site-packages);
# otherwise the pinned CPU build is installed.
$(STAMP): requirements.lock pyproject.toml
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  echo "setup: reusing the system's CUDA torch"; $(PY) -m venv --system-site-packages $(VENV); \
	  $(BIN)/pip install -q --upgrade pip; $(BIN)/pip install -q -r requirements.lock; \
	else \
	  $(PY) -m venv $(VENV); $(BIN)/pip install -q --upgrade pip; \
	  $(BIN)/pip install -q $(TORCH_PIN) -r requirements.lock; \
	fi
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

demo: setup
	$(BIN)/protege demo

# Chromium renders the HTML report in one test: Debian's `chromium` package, installed here when
# missing (as root, or through sudo). Without it `make test` stops here rather than skip that test.
BROWSERS := chromium chromium-browser google-chrome
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: chromium is missing and apt-get is not here to install it: install chromium" \
	    "(Debian/Ubuntu package 'chromium'); the report-rendering test needs it" >&2; exit 1; fi; \
	echo "browser: installing Debian's chromium package (apt-get)"; \
	if ! { $(SUDO) apt-get update -qq && \
	       $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then \
	  echo "make: could not install chromium with apt-get (see above): run" \
	    "'$(strip $(SUDO) apt-get install chromium)' yourself; the report-rendering test needs it" >&2; exit 1; fi; \
	command -v chromium >/dev/null 2>&1 || { echo "make: apt-get installed chromium but it is not on PATH" >&2; exit 1; }

test: setup browser
	$(BIN)/python -m pytest -q

# No download at all (tiny local models only); tests that need chromium or ../shared/data skip
# where those are absent (under CI=true a skip fails).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

fmt: setup
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) protege-workspace .pytest_cache
