# The two set-up commands of the README. Each creates .venv with what it needs when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The demo: synthetic data -> tiny autoencoder -> tiny DiAD -> evaluation. Each stage is cached in the run
# folder; a stage killed mid-way resumes from its last checkpoint on the next `make demo`.
DATA ?= data/synthetic
RUN ?= runs/tiny
AE_MINUTES ?= 4
TRAIN_MINUTES ?= 8
EVAL_ARGS ?= --limit 10 --pictures 1

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime,train,export,dev]"
	touch $(STAMP)

venv: $(STAMP)

$(DATA)/synthetic.json: | $(STAMP)
	$(PY) -m training.synthetic $(DATA) --seed 0
	$(PY) -m training.data $(DATA)

$(RUN)/.autoencoder-done: $(DATA)/synthetic.json
	$(PY) -m training.finetune_autoencoder --preset tiny --data $(DATA) --out $(RUN) --minutes $(AE_MINUTES) \
		--batch-size 8 --accumulate 1 --lr 1e-3 $(if $(wildcard $(RUN)/checkpoints/vae_last.safetensors),--resume)
	touch $@

$(RUN)/.train-done: $(RUN)/.autoencoder-done
	$(PY) -m training.train --preset tiny --data $(DATA) --out $(RUN) --minutes $(TRAIN_MINUTES) \
		$(if $(wildcard $(RUN)/checkpoints/last.safetensors),--resume)
	touch $@

demo: $(RUN)/.train-done
	$(PY) -m training.evaluate --run $(RUN) --data $(DATA) $(EVAL_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs data
