# Switchyard — the commands README documents. `make test` is what CI runs.
CARGO ?= cargo
PREFIX ?= /usr/local
BIN := target/release/switchyard

.PHONY: build run test bench perf lint fmt install clean fuzz fuzz-smoke soak

build:
	$(CARGO) build --release

## Quick start: the embedded config with two demo backends; then `curl localhost:8080/`.
run: build
	$(BIN) run --demo

## The whole test suite (unit + integration over real sockets on 127.0.0.1).
test:
	$(CARGO) build --bins
	$(CARGO) test

## Criterion micro-benchmarks (buffer pool, token encoding, balancer pick).
bench:
	$(CARGO) bench --bench core

## Side-by-side comparison with HAProxy and nginx (installs them if missing); appends to perf/RESULTS.md.
perf: build
	perf/compare

## Coverage-guided fuzzing (cargo-afl): every target for FUZZ_SECONDS (default 60) each; see fuzz/README.md.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} fuzz/run

## CI's short fuzz run: corpus and regression replay, then a few seconds per target if cargo-afl is installed.
fuzz-smoke:
	fuzz/run --smoke

## Soak under mixed load and churn (perf/soak --help); SOAK_ARGS="--duration 60 --connections 1000" for a short run.
soak: build
	perf/soak --skip-build $(SOAK_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/switchyard
	install -D -m 0644 systemd/switchyard.service $(DESTDIR)/etc/systemd/system/switchyard.service
	install -d -m 0755 $(DESTDIR)/etc/switchyard
	test -e $(DESTDIR)/etc/switchyard/switchyard.toml || \
		install -m 0644 examples/quickstart.toml $(DESTDIR)/etc/switchyard/switchyard.toml

clean:
	$(CARGO) clean
