# Switchyard — the commands README documents. `make test` is what CI runs.
CARGO ?= cargo
PREFIX ?= /usr/local
BIN := target/release/switchyard

.PHONY: build run test bench perf lint fmt install clean

build:
	$(CARGO) build --release

## Quick start: the embedded config with two demo backends; then `curl localhost:8080/`.
run: build
	$(BIN) run --demo

## The whole test suite (unit + integration over real sockets on 127.0.0.1).
test:
	$(CARGO) build --bins
	$(CARGO) test

## Criterion micro-benchmarks (buffer pool, token encoding, balancer pick, snapshot-change cost per worker).
bench:
	$(CARGO) bench --bench core

## Side-by-side comparison with HAProxy and nginx (installs them if missing); appends to perf/RESULTS.md.
perf: build
	perf/compare

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
