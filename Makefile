PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[dev,lm,tracking,cluster,hub]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check earful tests benchmarks
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check earful tests benchmarks

demo: $(STAMP)
	$(BIN)/earful study run studies/demo.yaml --out runs/demo
	@echo "demo: report in runs/demo/report/report.md"

clean:
	rm -rf $(VENV) runs
