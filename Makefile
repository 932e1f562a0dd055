# Switchyard — the commands README documents. `make test` is what CI runs.
CARGO ?= cargo
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
DOCDIR ?= $(DATADIR)/doc/switchyard
MANDIR ?= $(DATADIR)/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
# `make install BIN=path` installs a binary built elsewhere (no release build then).
BIN ?= target/release/switchyard
INSTALL ?= install
PYTHON ?= python3

.PHONY: build run test deps bench perf lint fmt install uninstall clean fuzz fuzz-smoke soak loadtest

build:
	$(CARGO) build --release

## Quick start: the embedded config with two demo backends; then `curl localhost:8080/`.
run: build
	$(BIN) run --demo

## What the tests need on a fresh machine (Debian/Ubuntu): installs what is missing.
deps:
	tests/deps.sh

## The whole test suite (unit + integration over real sockets on 127.0.0.1), once per I/O
## engine: everything on mio, then the integration tests again on io_uring.
test: deps
	$(CARGO) build --bins
	SWITCHYARD_ENGINE=mio $(CARGO) test
	SWITCHYARD_ENGINE=io_uring $(CARGO) test --test '*'

## Criterion micro-benchmarks (buffer pool, token encoding, balancer pick, snapshot-change cost per worker).
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

## The Gatling-style Locust scenario through Switchyard, faults off then the chaos broker on
## (perf/loadtest --help); reports in perf/loadtest-out/. LOADTEST_ARGS="--scale 1" for full rate.
loadtest: build
	$(PYTHON) -c "import locust" 2>/dev/null || $(PYTHON) -m pip install --quiet locust
	perf/loadtest --skip-build $(LOADTEST_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Installs under $(DESTDIR)$(PREFIX) (binary, man pages, shell completions, README and
## examples, the systemd unit with these paths) and the config in $(DESTDIR)$(SYSCONFDIR)
## (never over an existing one), with a random admin token if there is none.
install: $(if $(filter target/release/switchyard,$(BIN)),build)
	$(INSTALL) -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/switchyard
	$(INSTALL) -d -m 0755 $(DESTDIR)$(MANDIR)/man1
	$(BIN) manpages $(DESTDIR)$(MANDIR)/man1
	$(INSTALL) -d -m 0755 $(DESTDIR)$(DATADIR)/bash-completion/completions \
		$(DESTDIR)$(DATADIR)/zsh/site-functions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	$(BIN) completions bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/switchyard
	$(BIN) completions zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_switchyard
	$(BIN) completions fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/switchyard.fish
	$(INSTALL) -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	$(INSTALL) -d -m 0755 $(DESTDIR)$(DOCDIR)/examples
	$(INSTALL) -m 0644 examples/*.toml $(DESTDIR)$(DOCDIR)/examples/
	$(INSTALL) -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/bin|$(BINDIR)|g' -e 's|/usr/local/share/doc/switchyard|$(DOCDIR)|g' \
		-e 's|/etc/switchyard|$(SYSCONFDIR)/switchyard|g' \
		systemd/switchyard.service > $(DESTDIR)$(UNITDIR)/switchyard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/switchyard.service
	$(INSTALL) -m 0644 systemd/switchyard.socket $(DESTDIR)$(UNITDIR)/switchyard.socket
	$(INSTALL) -D -m 0644 systemd/switchyard.sysusers $(DESTDIR)$(SYSUSERSDIR)/switchyard.conf
	$(INSTALL) -D -m 0644 systemd/switchyard.tmpfiles $(DESTDIR)$(TMPFILESDIR)/switchyard.conf
	$(INSTALL) -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/switchyard
	test -e $(DESTDIR)$(SYSCONFDIR)/switchyard/switchyard.toml || \
		$(INSTALL) -m 0644 examples/production.toml $(DESTDIR)$(SYSCONFDIR)/switchyard/switchyard.toml
	test -e $(DESTDIR)$(SYSCONFDIR)/switchyard/admin.token || \
		(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' \
			> $(DESTDIR)$(SYSCONFDIR)/switchyard/admin.token)
	# On the target machine itself (no DESTDIR): create the user and the directories now.
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
		systemd-sysusers $(SYSUSERSDIR)/switchyard.conf && \
		systemd-tmpfiles --create $(TMPFILESDIR)/switchyard.conf; fi

## Removes what `make install` put under $(PREFIX); the config and token in
## $(SYSCONFDIR)/switchyard stay (they may hold your changes).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/switchyard $(DESTDIR)$(UNITDIR)/switchyard.service \
		$(DESTDIR)$(UNITDIR)/switchyard.socket $(DESTDIR)$(SYSUSERSDIR)/switchyard.conf \
		$(DESTDIR)$(TMPFILESDIR)/switchyard.conf
	rm -f $(DESTDIR)$(MANDIR)/man1/switchyard.1 $(DESTDIR)$(MANDIR)/man1/switchyard-*.1
	rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/switchyard \
		$(DESTDIR)$(DATADIR)/zsh/site-functions/_switchyard \
		$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/switchyard.fish
	rm -rf $(DESTDIR)$(DOCDIR)
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/switchyard (config and admin token)"

clean:
	$(CARGO) clean
