# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test deps lint unit e2e demo dev-cluster dev-cluster-down crds build skips-reset skips-report

# Tests that cannot run on this machine append "<test>: <reason>" here
# (tests/support/skip.rs); under CI=true they fail instead.
export CLAUDE_OPERATOR_SKIP_FILE ?= $(CURDIR)/target/skipped-tests.txt

## Every test: formatting, lints, unit tests, then the end-to-end suite against
## the local control plane (built and started here, stopped afterwards), and
## the demo itself, so the README's first command cannot rot. Ends with the
## skipped tests and why ("N skipped: ...").
test: skips-reset deps lint unit e2e demo skips-report

skips-reset:
	e2e/skipped.sh reset

skips-report:
	@e2e/skipped.sh report

deps:
	e2e/ensure-deps.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings

unit:
	$(CARGO) test

e2e:
	e2e/run-tests.sh

## The main job on a local control plane, set up by itself.
demo: deps
	e2e/demo.sh

## A local control plane for development; prints how to point kubectl at it.
dev-cluster:
	e2e/cluster.sh up
	@echo
	@echo "The local control plane is up. Point kubectl at it with:"
	@echo "  eval \"\$$(e2e/cluster.sh env)\""
	@echo "Stop it with: make dev-cluster-down"

dev-cluster-down:
	e2e/cluster.sh down

## Regenerate crds/ (and the chart's copy) from the Rust types.
crds:
	$(CARGO) run --quiet -- crd > crds/claude-operator.yaml
	cp crds/claude-operator.yaml charts/claude-operator/crds/claude-operator.yaml

build:
	$(CARGO) build --release
