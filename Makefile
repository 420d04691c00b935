# One command sets up a fresh machine and runs the main job (make demo); one runs the tests (make test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BERTEDGE := $(VENV)/bin/bertedge
DEMO_OUT ?= runs/demo

.PHONY: setup test test-fast demo demo-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,inc,tune]"
	touch $@

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=15

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

demo: setup
	HF_HUB_OFFLINE=1 $(BERTEDGE) run recipes/sst2.yaml --out $(DEMO_OUT) --resume

# The old main job, for a first look in minutes rather than hours: fine-tune 1 epoch + evaluate.
demo-quick: setup
	HF_HUB_OFFLINE=1 $(BERTEDGE) finetune --model minilm-l6 --task text-classification --data sst2 \
		--epochs 1 --max-length 64 --out $(DEMO_OUT)-quick/sst2-teacher --overwrite
	$(BERTEDGE) eval $(DEMO_OUT)-quick/sst2-teacher
	@echo "artifact: $(DEMO_OUT)-quick/sst2-teacher"

clean:
	rm -rf $(VENV) runs .pytest_cache
