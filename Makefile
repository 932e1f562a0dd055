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

## Criterion micro-benchmarks (buffer pool, token encoding, balancer pick).
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
	install -d -m 0755 $(DESTDIR)/etc/switchyard
	test -e $(DESTDIR)/etc/switchyard/switchyard.toml || \
		install -m 0644 examples/quickstart.toml $(DESTDIR)/etc/switchyard/switchyard.toml
	# systemd: the units (binary path following PREFIX), the user, the directories.
	install -d -m 0755 $(DESTDIR)/etc/systemd/system $(DESTDIR)$(PREFIX)/lib/sysusers.d \
		$(DESTDIR)$(PREFIX)/lib/tmpfiles.d $(DESTDIR)$(PREFIX)/share/doc/switchyard
	sed 's#/usr/local#$(PREFIX)#g' systemd/switchyard.service > $(DESTDIR)/etc/systemd/system/switchyard.service
	install -m 0644 systemd/switchyard.socket $(DESTDIR)/etc/systemd/system/switchyard.socket
	install -m 0644 systemd/switchyard.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/switchyard.conf
	install -m 0644 systemd/switchyard.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/switchyard.conf
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/switchyard/README.md
	# On the target machine itself: create the user and directories now.
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
		systemd-sysusers $(PREFIX)/lib/sysusers.d/switchyard.conf && \
		systemd-tmpfiles --create $(PREFIX)/lib/tmpfiles.d/switchyard.conf; fi

clean:
	$(CARGO) clean
