# Two commands for a newcomer: `make up` runs the hub, `make test` proves it.
# Each sets up what it needs on a fresh machine (Python 3.11, Java 17, Maven, the package registries):
# a virtualenv with the package and its test tools, and the Kafka jars from Maven Central.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: up test kafka-jars clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

kafka-jars: $(INSTALLED)
	$(BIN)/verwijshub kafka fetch

up: kafka-jars
	$(BIN)/verwijshub up

test: kafka-jars
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
