# Everything a fresh machine needs comes from PyPI and npm; nothing is assumed pre-installed.
# `make test` also needs a few Debian programs (scripts/need-tools): run as root it installs
# them with apt-get; otherwise its last line says what is missing and how to install it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ANVIL_VERSION := 1.7.1
ANVIL := .tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
export PAYMENT_WATCHER_ANVIL := $(abspath $(ANVIL))
STANDARDWEBHOOKS_JS_VERSION := 1.1.1
STANDARDWEBHOOKS_JS := .tools/node_modules/standardwebhooks/package.json

.PHONY: demo test tools lint unit integration bench bench-full install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(ANVIL):
	mkdir -p .tools
	test -f .tools/package.json || echo '{"name":"payment-watcher-tools","private":true}' > .tools/package.json
	cd .tools && npm install --no-audit --no-fund --silent @foundry-rs/anvil-linux-amd64@$(ANVIL_VERSION)
	test -x $(ANVIL)

# The official Standard Webhooks verifier for Node: the callback tests hand real callbacks to it.
$(STANDARDWEBHOOKS_JS):
	mkdir -p .tools
	test -f .tools/package.json || echo '{"name":"payment-watcher-tools","private":true}' > .tools/package.json
	cd .tools && npm install --no-audit --no-fund --silent standardwebhooks@$(STANDARDWEBHOOKS_JS_VERSION)
	test -f $@

install: $(VENV)/.installed $(ANVIL) $(STANDARDWEBHOOKS_JS)

demo: install
	$(BIN)/payment-watcher demo

lint: $(VENV)/.installed
	$(BIN)/ruff check watcher tests $(wildcard bench)
	$(BIN)/mypy

# Before `install`: it may bring npm. Never fails itself; in CI the report after the tests does.
tools:
	@bash scripts/need-tools install

test: tools install lint
	rc=0; $(BIN)/pytest -q -p no:cacheprovider || rc=$$?; \
	bash scripts/need-tools report || { [ $$rc -ne 0 ] || rc=1; }; exit $$rc

unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/python -m bench --short

bench-full: install
	$(BIN)/python -m bench --full

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
