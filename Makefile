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

# Chromium renders the HTML report in one test; installed here when missing (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "browser: chromium not installed; the report-rendering test will skip")

test: setup browser
	$(BIN)/python -m pytest -q

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
