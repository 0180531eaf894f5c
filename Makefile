# Limpet: the commands a newcomer needs.
#   make test     install test dependencies (Debian), then run every test
#   make test-net only the network-fault tests (namespaces, iptables; root)
#   make cluster  build release binaries and run the stack on loopback
#   make cluster-tls  the same behind TLS (https://localhost:8443)
#   make check    formatting and lints, as CI wants them
#   make deb      Debian packages of the three binaries in target/debian/ (checked)

CARGO ?= cargo

.PHONY: test test-net test-deps bench-deps build release cluster cluster-tls check fmt bench bench-quick bench-broker deb deb-deps deploy-check

test: test-deps
	$(CARGO) test --workspace --all-targets --locked
	node --test tests/browser/
	$(MAKE) --no-print-directory deploy-check

# `make test` runs these too (they are ordinary test targets); this runs
# them alone. Without root, iproute2 or iptables they print SKIPPED.
test-net: test-deps
	$(CARGO) test --workspace --locked --test 'netfault*'

test-deps:
	@./scripts/install-test-deps.sh
	@./deploy/install-deps.sh rules

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

# Debian packages (cargo-deb): target/debian/limpet-{proxy,broker,node}_<version>-1_<arch>.deb,
# each with the binary, /etc/limpet/<name>.toml (conffile), the systemd unit
# from deploy/systemd and its README section; then installs each into a
# scratch root with dpkg, runs --check, verifies the unit and purges it.
deb: deb-deps release
	./deploy/deb-docs.sh
	for p in limpet-proxy limpet-broker limpet-node; do $(CARGO) deb -p $$p --no-build --locked || exit 1; done
	./deploy/check-debs.sh

deb-deps:
	@./deploy/install-deps.sh deb

# What deploy/ ships, without building packages: default configs pass
# --check and units pass systemd-analyze verify (against the debug
# binaries `make test` built), alert rules pass promtool.
deploy-check:
	@./deploy/install-deps.sh rules
	./deploy/verify-units.sh target/debug
	promtool check rules deploy/prometheus/alerts.yml
