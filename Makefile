PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,lm]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check earful tests benchmarks
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check earful tests benchmarks

DEMO_CORPUS ?= runs/corpus-demo

demo: $(STAMP)
	test -f $(DEMO_CORPUS)/manifests/train.jsonl || \
		$(BIN)/earful synth $(DEMO_CORPUS) --hours 0.4 --domain commands --seed 0
	$(BIN)/earful pretrain earful/configs/pretrain-demo.yaml \
		data.train=$(DEMO_CORPUS)/manifests/train.jsonl data.valid=$(DEMO_CORPUS)/manifests/dev.jsonl \
		--out runs/demo/pretrain --resume
	@echo "demo: pre-training run in runs/demo/pretrain (train.jsonl, valid.jsonl, checkpoints/)"

clean:
	rm -rf $(VENV) runs
