# The two set-up commands of the README. Each creates .venv with what it needs when it is missing.
# The interpreter must have a shared libpython (Py_ENABLE_SHARED=1: pyenv's and Debian's here) for Triton's
# Python backend, which embeds it (python -m runtime.serve says so when it has none).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# The demo: synthetic data -> tiny autoencoder -> tiny DiAD -> normal statistics -> evaluation -> export ->
# calibration -> the stream over synthetic conveyor frames. Both training stages start from the shipped tiny base model and use the
# preset's recipe: the Makefile passes only data, folders and budgets. Each stage is cached; a training stage
# killed mid-way resumes from its last checkpoint on the next `make demo`; only the stream runs every time.
DATA ?= data/synthetic
CALIBRATION ?= data/calibration
RUN ?= runs/tiny
MODEL ?= models/tiny
AE_MINUTES ?= 3
TRAIN_MINUTES ?= 6
EVAL_ARGS ?= --pictures 1
STREAM_ARGS ?= --frames 300 --batch-size 8 --save runs/stream/annotated.mp4

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime,train,export]"
	touch $(STAMP)

# The tests also need the dev and serve extras, and the Triton server.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[runtime,train,export,dev,serve]"
	$(PY) -m pip install --quiet --no-deps nvidia-pytriton==0.7.0  # the Triton server (pyproject.toml: serve)
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

$(DATA)/synthetic.json: | $(STAMP)
	$(PY) -m training.synthetic $(DATA) --seed 0
	$(PY) -m training.data $(DATA)

$(RUN)/.autoencoder-done: $(DATA)/synthetic.json
	$(PY) -m training.finetune_autoencoder --preset tiny --data $(DATA) --out $(RUN) --minutes $(AE_MINUTES) \
		$(if $(wildcard $(RUN)/checkpoints/vae_last.safetensors),--resume)
	touch $@

$(RUN)/.train-done: $(RUN)/.autoencoder-done
	$(PY) -m training.train --preset tiny --data $(DATA) --out $(RUN) --minutes $(TRAIN_MINUTES) \
		$(if $(wildcard $(RUN)/checkpoints/last.safetensors),--resume)
	touch $@

# The scorer's normal statistics (the image's features and the reconstruction's feature residual on the training
# images, for the recipe's plan and for the VAE alone): evaluation scores with them, export carries them.
$(RUN)/.statistics-done: $(RUN)/.train-done
	$(PY) -m training.statistics --run $(RUN) --data $(DATA)
	touch $@

$(RUN)/metrics.md: $(RUN)/.statistics-done
	$(PY) -m training.evaluate --run $(RUN) --data $(DATA) $(EVAL_ARGS)

$(MODEL)/manifest.json: $(RUN)/.statistics-done
	$(PY) -m export --run $(RUN) --out $(MODEL)

# Thresholds from normal images the model never saw (a second synthetic set, another seed, 50 per class) at a 5 %
# false-reject rate: one model for all classes, an image threshold per class (each frame judged by its nearest class).
$(CALIBRATION)/synthetic.json: | $(STAMP)
	$(PY) -m training.synthetic $(CALIBRATION) --seed 1 --train 1 --test-good 50 --test-defect 0

$(MODEL)/.calibrated: $(MODEL)/manifest.json $(CALIBRATION)/synthetic.json
	$(PY) -m runtime.calibrate --model $(MODEL) --images '$(CALIBRATION)/*/test/good/*.png' --fpr 0.05 --per-class
	touch $@

demo: $(RUN)/metrics.md $(MODEL)/.calibrated
	@mkdir -p runs/stream
	$(PY) -m runtime.stream --model $(MODEL) --source synthetic $(STREAM_ARGS)

# One pytest worker per CPU (pytest-xdist; at most 4: each holds its own copy of the session fixtures).
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4

clean:
	rm -rf $(VENV) runs data models
