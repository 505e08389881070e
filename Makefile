# Latchkey — the two commands that matter: `make run` and `make test`. See README.md.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
TESTENV_DIR ?= $(CURDIR)/.testenv
CACHE ?= $(HOME)/.cache/latchkey
export PATH := $(CACHE)/bin:$(PATH)

.PHONY: testenv-build testenv testenv-down

testenv-build: ## build and cache the control-plane binaries (cold ~9 min, then instant)
	@scripts/testenv/build.sh

testenv: testenv-build ## start etcd, kube-apiserver, controller-manager, scheduler, kwok and a fake Node
	@scripts/testenv/up.sh "$(TESTENV_DIR)"

testenv-down: ## stop exactly what `make testenv` started and remove its state
	@scripts/testenv/down.sh "$(TESTENV_DIR)"
