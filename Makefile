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

.PHONY: demo test venv clean gpu-kit gpu-dry-run

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime,train,export]"
	touch $(STAMP)

# The tests also need the dev and serve extras, the Triton server, and Debian's Chromium with its driver (the
# dashboard's browser tests, tests/test_dashboard_browser.py; apt-get through sudo when not root).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[runtime,train,export,dev,serve]"
	$(PY) -m pip install --quiet --no-deps nvidia-pytriton==0.7.0  # the Triton server (pyproject.toml: serve)
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium chromium-driver; }
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
# jetson-check first: the torch-free tests under Jetson's Python.
test: $(TEST_STAMP) jetson-check
	$(PY) -m pytest -q -n auto --maxprocesses 4

# Jetson's Python: JetPack 6 ships Python 3.10, and NVIDIA's Jetson wheels are built against numpy 1.x. .venv310
# holds the runtime extra at JetPack-6-like versions (JETSON_PINS) plus the test tools (the dev extra, JETSON_TOOLS);
# the torch-free tests (tests/helpers/torch_free.py) run there with torch, training, export and benchmarks
# unimportable. PYTHON310 names the interpreter; by default pyenv's 3.10, else python3.10 on the PATH.
PYTHON310 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.10*/bin/python3.10) \
	$(shell command -v python3.10))
JETSON_VENV := .venv310
JETSON_PY := $(JETSON_VENV)/bin/python
JETSON_STAMP := $(JETSON_VENV)/.installed
JETSON_PINS := numpy==1.26.4 opencv-python-headless==4.10.0.84 onnxruntime==1.23.2
# onnx writes the tests' tiny model folders; tqdm is calibrate's optional progress bar.
JETSON_TOOLS := onnx==1.17.0 tqdm

$(JETSON_STAMP): pyproject.toml
	@"$(PYTHON310)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null || { echo \
		"jetson-check: no Python 3.10 (PYTHON310='$(PYTHON310)'): pyenv install 3.10, or make PYTHON310=/path/to/python3.10" \
		>&2; exit 1; }
	test -x $(JETSON_PY) || $(PYTHON310) -m venv $(JETSON_VENV)
	$(JETSON_PY) -m pip install --quiet --upgrade pip
	$(JETSON_PY) -m pip install --quiet -e ".[runtime,dev]" $(JETSON_PINS) $(JETSON_TOOLS)
	touch $@

.PHONY: jetson-check
jetson-check: $(JETSON_STAMP)
	$(JETSON_PY) -m pytest -q --torch-free

# The GPU run's kit (docs/gpu.md): the wheels the GPU test machine lacks (benchmarks/gpu_kit.txt), for its CPython 3.12
# on manylinux x86_64, downloaded afresh into .whl/ and checked against its packages (benchmarks/gpu_machine.json),
# the pins and the 30 MiB limit. Carry .whl to the machine: bash benchmarks/gpu_run.sh "$OUT" there.
KIT := .whl
KIT_TARGET := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64

gpu-kit: | $(STAMP)
	rm -rf $(KIT)
	$(PY) -m pip download --quiet --no-deps $(KIT_TARGET) -d $(KIT) -r benchmarks/gpu_kit.txt
	$(PY) -m benchmarks.gpu_kit check $(KIT)

# The same GPU run on this CPU at tiny sizes (tests/test_gpu_run.py runs it in `make test`); report in runs/gpu-dry-run.
gpu-dry-run: | $(STAMP)
	$(PY) -m benchmarks.gpu_run --out runs/gpu-dry-run --sizes dry --device cpu --deadline-minutes 5

clean:
	rm -rf $(VENV) $(JETSON_VENV) $(KIT) runs data models
