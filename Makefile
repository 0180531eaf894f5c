# Limpet: the commands a newcomer needs.
#   make test     install test dependencies (Debian), then run every test
#   make cluster  build release binaries and run the stack on loopback
#   make cluster-tls  the same behind TLS (https://localhost:8443)
#   make check    formatting and lints, as CI wants them

CARGO ?= cargo

.PHONY: test test-deps build release cluster cluster-tls check fmt bench-broker

test: test-deps
	$(CARGO) test --workspace --all-targets --locked
	node --test tests/browser/

test-deps:
	@./scripts/install-test-deps.sh

build:
	$(CARGO) build --workspace --locked

release:
	$(CARGO) build --workspace --release --locked

cluster: release
	@./scripts/cluster.sh

# The same stack behind limpet-proxy terminating TLS (self-signed, made at start).
cluster-tls: release
	@TLS=1 ./scripts/cluster.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

# PUBLISH throughput, limpet-broker vs redis-server, back to back.
bench-broker: release test-deps
	@./bench/broker_publish.sh
