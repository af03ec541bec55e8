# The two commands: `make demo` (Tether's main job against the local AWS emulator)
# and `make test` (every test). Each installs the pinned emulator into .venv first;
# the emulator is started and stopped by the Rust harness itself.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
EMULATOR := $(VENV)/.tether-emulator

BUILD_VENV := .venv-build
BUILD_TOOLS := $(BUILD_VENV)/.tether-build
INFRA_VENV := .venv-infra
INFRA_TOOLS := $(INFRA_VENV)/.tether-infra
CDK_MODULES := infra/cdk/node_modules/.tether-installed
export CDK_DISABLE_CLI_TELEMETRY := true
export SAM_CLI_TELEMETRY := 0

.PHONY: demo test bench build emulator fuzz chaos infra-check clean

# A spot market for DEMO_SECONDS (45) on DEMO_NODES (3) nodes, DEMO_RATE (4) interruptions per
# node per minute, seeded by DEMO_SEED (5): e.g. make demo DEMO_NODES=5 DEMO_RATE=8. make
# exports variables set on its command line to the recipe, where the demo reads them.
demo: $(EMULATOR)
	cargo run --quiet -p tether-tests --bin tether-demo

test: $(EMULATOR) infra-check
	cargo build --workspace --bins
	cargo test --workspace --no-run --quiet
	tests/emulator/prove-rules.sh
	@# The fuzzer mostly waits on its API (a group route runs a controller pass of up to 3 s), on
	@# an emulator of its own: it runs beside the suite, its output kept for after it.
	@mkdir -p target/fuzz
	@PYTHON=$(PYTHON) tests/fuzz/run.sh > target/fuzz/run.log 2>&1 & fuzz=$$!; \
	  cargo test --workspace -- --skip fake::chaos; suite=$$?; \
	  wait $$fuzz; fuzzed=$$?; tail -n 25 target/fuzz/run.log; \
	  [ $$suite -eq 0 ] && [ $$fuzzed -eq 0 ]
	@# 200 nodes reclaimed at once through the queues: alone, so that it and the others do not
	@# wait on each other's emulator calls (about 2.5 min alone, 5.5 more in the suite's midst).
	cargo test -p tether-tests --test emulator -- --ignored two_hundred_nodes_reclaimed --nocapture
	@# The chaos test prints its one line: chaos: scenarios=N violations=V (CHAOS_SCENARIOS sets N).
	cargo test --workspace --lib --quiet fake::chaos -- --nocapture

# Mass interruptions (100 to 10,000 nodes) and the reconciler's cost, simulated on a virtual
# clock with the production code on the fakes: one line per scenario, a chart per burst in
# tests/bench/ (README "Mass interruptions"). Not part of `make test`; needs no emulator.
# BENCH_ONLY=burst-1000 runs one scenario, BENCH_SEED another seed.
bench:
	cargo run --quiet -p tether-tests --bin tether-bench

# schemathesis (pinned, in .venv-fuzz) against the API served locally: 0 server errors allowed.
fuzz: $(EMULATOR)
	cargo build -p tether-tests --bins
	PYTHON=$(PYTHON) tests/fuzz/run.sh

# One chaos scenario, replayed with its moves and logs: make chaos SEED=<seed>
# (or a longer run: make chaos CHAOS_SCENARIOS=100000).
chaos:
	CHAOS_SEED=$(SEED) cargo test --workspace --lib chaos -- --nocapture

emulator: $(EMULATOR)

# The release Lambda zips, target/lambda-zip/<function>/bootstrap.zip (the bare binaries in target/lambda/<function>/bootstrap) (ARCH=arm64|x86_64; by
# default arm64 if the Rust toolchain has its standard library). Not part of `make test`:
# a cold release build takes about 9 minutes.
build: $(BUILD_TOOLS)
	infra/build.sh

$(BUILD_TOOLS): infra/build-requirements.txt
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/build-requirements.txt
	touch $@

# The deploy stacks, offline: SAM template lint, the CDK app's tests (assertions, SAM/CDK
# parity), its synthesis and lint (infra/check.sh).
infra-check: $(INFRA_TOOLS) $(CDK_MODULES)
	infra/check.sh

$(INFRA_TOOLS): infra/requirements.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements.txt
	touch $@

# aws-cdk-lib, constructs, typescript and the CDK CLI (2.x), as package-lock.json pins them.
$(CDK_MODULES): infra/cdk/package.json infra/cdk/package-lock.json
	cd infra/cdk && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# moto and every dependency pinned (tests/emulator/requirements.txt).
$(EMULATOR): tests/emulator/requirements.txt
	$(PYTHON) -m venv $(VENV) || { echo "'$(PYTHON) -m venv' failed: install Python 3's venv module (Debian: apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/emulator/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) .venv-fuzz $(INFRA_VENV) $(BUILD_VENV) infra/cdk/node_modules infra/cdk/dist infra/cdk/cdk.out target
