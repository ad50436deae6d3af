# Two commands for a newcomer: `make up` runs the hub, `make test` proves it.
# Each sets up what it needs on a fresh machine (Python 3.11, Java 17, Maven, the package registries):
# a virtualenv with the package and its test tools, and the Kafka jars from Maven Central.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

ASYNCAPI := tests/asyncapi
ASYNCAPI_PARSER := $(ASYNCAPI)/node_modules/.installed

.PHONY: up test tools kafka-jars asyncapi-parser clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

kafka-jars: $(INSTALLED)
	$(BIN)/verwijshub kafka fetch

up: kafka-jars
	$(BIN)/verwijshub up

# Debian's prometheus (promtool checks the alert rules), chromium (the status page's browser test and the
# report's PDF), kcat (a third-party Kafka client for the access tests; run through deploy/kcat) and
# poppler-utils (pdftoppm: the report's PDF as a page image in its test).
tools:
	@command -v promtool >/dev/null && command -v chromium >/dev/null && command -v kcat >/dev/null && \
	  command -v pdftoppm >/dev/null || \
	  ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	    --no-install-recommends prometheus chromium kcat poppler-utils)

# The AsyncAPI project's parser (npm, pinned by tests/asyncapi/package-lock.json), which a test runs against
# schemas/asyncapi.json; installed again only when the lock file changes (Node.js 18 or later and npm on PATH).
$(ASYNCAPI_PARSER): $(ASYNCAPI)/package-lock.json
	cd $(ASYNCAPI) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

asyncapi-parser: $(ASYNCAPI_PARSER)

# Three workers, each taking whole test modules (a module's broker and hub stay with it; the modules of the shared
# hub together, tests/conftest.py): the end-to-end tests spend much of their time waiting on brokers and processes
# (two workers kept 1.2 of the 2 cores busy), so three share the machine's two cores.
test: kafka-jars tools asyncapi-parser
	$(BIN)/pytest -n 3 --dist loadscope

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts $(ASYNCAPI)/node_modules
