# Two commands do all the set-up on a fresh machine:
#   make demo   install what is needed, then run the main job
#   make test   install what is needed, then run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-prior test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/gdp predict --config configs/demo.yaml

# how data/demo_prior.pt was made: fine-tune skimage64 on the document pages of data/documents/train (written again
# by benchmarks/document_data.py, byte for byte) with the recipe of configs/finetune_documents.yaml, export the EMA
# weights. Fit validates with the demo's task, deblurring (the task's operator is all a fit takes from it: the
# export has the same bytes with configs/task/sr4.yaml). The run's folder is made afresh: its logs
# and last.ckpt are this run's only
DEMO_RUN := logs/finetune/demo_prior
demo-prior: install
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install 'matplotlib>=3.5'  # the pages' fonts
	rm -rf $(DEMO_RUN)
	$(PY) benchmarks/document_data.py
	$(VENV)/bin/gdp fit --config configs/prior/skimage64.yaml --config configs/task/deblur.yaml \
		--config configs/finetune.yaml --config configs/finetune_documents.yaml \
		--data.input_dir data/documents/train --trainer.logger.init_args.version demo_prior
	$(VENV)/bin/gdp export $(DEMO_RUN)/checkpoints/last.ckpt data/demo_prior.pt --dtype float16

# one pytest-xdist worker per core, a test file to a worker (its module fixtures built once)
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

bench: install
	$(PY) benchmarks/unet_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
