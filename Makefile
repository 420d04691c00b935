# One command sets up a fresh machine and runs the demo (make demo); one runs the tests (make test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BERTEDGE := $(VENV)/bin/bertedge
DEMO_OUT ?= runs/demo
HEADLINE_OUT ?= runs/sst2

.PHONY: setup setup-legacy js-setup lint typecheck test test-fast test-legacy demo headline demo-quick clean

# The current stack (constraints.txt: transformers 5, no optimum).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A .venv made before the stack split holds optimum-onnx, which cannot run on transformers 5 and would
	@# make bertedge take this for the legacy stack: the current stack has no optimum extra.
	$(PY) -m pip uninstall -q -y optimum optimum-onnx 2>/dev/null
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,inc,tune,tokenizer]"
	touch $@

# The legacy stack in its own venv (constraints-legacy.txt: transformers 4.57 + the optimum extra, which
# optimum-onnx 0.1 needs): the optimum exporter and peer path.
VENV_LEGACY ?= .venv-legacy
PY_LEGACY := $(VENV_LEGACY)/bin/python
setup-legacy: $(VENV_LEGACY)/.installed

$(VENV_LEGACY)/.installed: pyproject.toml constraints-legacy.txt
	$(PYTHON) -m venv $(VENV_LEGACY)
	$(PY_LEGACY) -m pip install -q --upgrade pip
	$(PY_LEGACY) -m pip install -q -c constraints-legacy.txt torch==2.13.0
	$(PY_LEGACY) -m pip install -q -c constraints-legacy.txt -e ".[dev,inc,tokenizer,optimum]"
	touch $@

# The JavaScript examples' packages, from their lockfiles (tests/test_js.py). onnxruntime-node's
# install script would download CUDA binaries, which an offline machine cannot: ONNXRUNTIME_NODE_INSTALL=skip.
JS_LOCKS := examples/node/node_modules/.package-lock.json examples/web/node_modules/.package-lock.json
js-setup: $(JS_LOCKS)

examples/%/node_modules/.package-lock.json: examples/%/package.json examples/%/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd examples/$* && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.package-lock.json; \
	else echo "npm not found: the JavaScript tests skip (CI fails them); apt-get install nodejs npm"; fi

lint: setup
	$(VENV)/bin/ruff check bertedge tests benchmarks

# mypy on the package at the lenient level pyproject.toml's [tool.mypy] sets (kept green; CI runs it).
typecheck: setup
	$(VENV)/bin/mypy

test: setup js-setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=15

test-fast: setup js-setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

# The legacy job (.ci/run runs it after `make test`): what only the optimum stack has (the two exporters give
# the same graphs and predictions, ORTModelFor* loads a bertedge bundle, the optimum peer path, `info` names
# the legacy stack) and Neural Compressor on transformers 4.57. The full suite runs on the current stack.
LEGACY_TESTS ?= tests/test_export.py::test_exporters_give_the_same_graph_and_predictions \
	tests/test_export.py::test_optimum_ortmodel_loads_a_bertedge_bundle tests/test_peer.py \
	tests/test_cli.py::test_info_names_the_stack_and_the_peer tests/test_inc_quantize.py
test-legacy: setup-legacy
	HF_HUB_OFFLINE=1 $(PY_LEGACY) -m pytest -q $(LEGACY_TESTS)

# The demo: every stage on a 4,000-sentence SST-2 subset (recipes/demo.yaml), a few minutes on 2 cores,
# then predictions with the int8 bundle and the report's path. `make headline` is the full recipe (hours).
demo: setup
	HF_HUB_OFFLINE=1 $(BERTEDGE) run recipes/demo.yaml --out $(DEMO_OUT) --resume
	HF_HUB_OFFLINE=1 $(BERTEDGE) predict $(DEMO_OUT)/artifacts/quantize \
		"a gripping, beautifully acted film" "the plot is thin and the jokes fall flat" \
		"not as bad as I feared, but not good either"
	@echo "report: $(DEMO_OUT)/report.md (and report.json, pareto.png)"

headline: setup
	HF_HUB_OFFLINE=1 $(BERTEDGE) run recipes/sst2.yaml --out $(HEADLINE_OUT) --resume

# The old quick look: fine-tune 1 epoch + evaluate.
demo-quick: setup
	HF_HUB_OFFLINE=1 $(BERTEDGE) finetune --model minilm-l6 --task text-classification --data sst2 \
		--epochs 1 --max-length 64 --out $(DEMO_OUT)-quick/sst2-teacher --overwrite
	$(BERTEDGE) eval $(DEMO_OUT)-quick/sst2-teacher
	@echo "artifact: $(DEMO_OUT)-quick/sst2-teacher"

clean:
	rm -rf $(VENV) $(VENV_LEGACY) runs .pytest_cache
