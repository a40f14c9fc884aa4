# Two commands do all the set-up on a fresh machine:
#   make demo   install what is needed, then run the main job
#   make test   install what is needed, then run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/gdp --version
	$(PY) -m gdp_lightning.sample_prior --preset skimage64 --checkpoint ../shared/priors/skimage64.pt \
		--steps 50 --num 16 --out logs/samples/skimage64.png

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/unet_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
