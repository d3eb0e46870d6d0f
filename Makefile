# The two set-up commands of the README. Each creates .venv with what it needs when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/synthetic

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime,train,export,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m training.synthetic $(DATA) --seed 0
	$(PY) -m training.data $(DATA)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs data
