# Limpet: the commands a newcomer needs.
#   make test     install test dependencies (Debian), then run every test
#   make cluster  build release binaries and run the stack on loopback
#   make cluster-tls  the same behind TLS (https://localhost:8443)
#   make check    formatting and lints, as CI wants them

CARGO ?= cargo

.PHONY: test test-deps bench-deps build release cluster cluster-tls check fmt bench bench-quick bench-broker

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

# Side by side with nginx, HAProxy and Redis; writes bench/results/latest.md and .svg.
bench: release bench-deps
	target/release/limpet-bench run --out bench/results

bench-quick: release bench-deps
	target/release/limpet-bench run --quick --out bench/results

bench-deps: test-deps
	@./scripts/install-bench-deps.sh

# PUBLISH throughput, limpet-broker vs redis-server, back to back.
bench-broker: release test-deps
	@./bench/broker_publish.sh

# Every fuzz target in fuzz/ for FUZZ_SECONDS each (nightly; installs cargo-fuzz when missing).
.PHONY: fuzz
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) ./fuzz/run.sh
