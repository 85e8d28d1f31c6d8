# llm-router: every target does its own set-up (idempotent), so a fresh clone needs only
# `make run` or `make test`.
.PHONY: run test bench build release setup check fmt lint clean

# Build (release) and start the router on conf/demo.yaml.
run: release
	scripts/run-demo.sh

# The whole test suite (Rust unit + integration tests, OpenAI Python SDK tests).
test:
	scripts/test.sh

# Router vs direct, mock engines on loopback; prints a markdown table.
bench: setup
	cargo bench --benches

setup:
	scripts/setup.sh

build: setup
	cargo build --bins --examples

release: setup
	cargo build --release --bins --examples

check: build
	target/debug/llm-router check --config conf/demo.yaml

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

clean:
	cargo clean
