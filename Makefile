# Latchkey — the two commands that matter: `make run` and `make test`. See README.md.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
TESTENV_DIR ?= $(CURDIR)/.testenv
CACHE ?= $(HOME)/.cache/latchkey
export PATH := $(CACHE)/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: run test testenv-build testenv testenv-down crds build lint chart-check faults bench

run: ## run the operator against the current cluster, or a local control plane it starts
	@scripts/run.sh

test: ## build what is missing, start the test control plane, run every test, stop it
	@scripts/test.sh

build:
	cargo build --release --locked

crds: ## regenerate crds/ (and the chart's copy) from src/api
	cargo run --quiet --locked -- crds > crds/latchkey.dev_crds.yaml
	@if [ -d charts/latchkey/templates ] && [ -x scripts/sync-chart-crds.sh ]; then scripts/sync-chart-crds.sh; fi

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

testenv-build: ## build and cache the control-plane binaries (cold ~9 min, then instant)
	@scripts/testenv/build.sh

testenv: testenv-build ## start etcd, kube-apiserver, controller-manager, scheduler, kwok and a fake Node
	@scripts/testenv/up.sh "$(TESTENV_DIR)"

testenv-down: ## stop exactly what `make testenv` started and remove its state
	@scripts/testenv/down.sh "$(TESTENV_DIR)"

chart-check: testenv ## helm lint, kubeconform -strict (chart + examples), helm install into the bed
	@KUBECONFIG="$(TESTENV_DIR)/kubeconfig" scripts/chart-check.sh

faults: ## long fault/bad-input/isolation suite; figures in target/faults/results.json
	@scripts/faults.sh

bench: ## benchmark: table, target/bench/results.json, plot (BENCH_SCALE=tiny|small|full, FIGURES=a,b,...)
	@FIGURES="$(FIGURES)" BENCH_SCALE="$(BENCH_SCALE)" scripts/bench.sh
