#!/usr/bin/env bash
# `make deps`: installs what the test suite needs and is missing (Debian/Ubuntu packages via
# apt-get, the Python `websockets` client via pip). `make test` runs it first; `.ci/run` too.
# Each need is checked first, so on a ready machine this does nothing and needs no root.
set -euo pipefail

need_apt=()
command -v make >/dev/null || need_apt+=(make)
command -v gcc >/dev/null || need_apt+=(gcc)
# HTTP tests drive the proxy with real clients.
command -v curl >/dev/null || need_apt+=(curl)
command -v ab >/dev/null || need_apt+=(apache2-utils)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# prlimit, and setpriv (the privileged-port check runs as nobody).
command -v prlimit >/dev/null || need_apt+=(util-linux)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The metrics tests check the Prometheus exposition with promtool.
command -v promtool >/dev/null || need_apt+=(prometheus)
# The /ui test drives the status page in headless Chromium.
command -v chromium >/dev/null || need_apt+=(chromium)
# The install test verifies the installed unit.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# Discovery tests: the real Docker Engine (test image = busybox via docker import, no
# registry) and a real DNS server (dnsmasq).
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v busybox >/dev/null || need_apt+=(busybox-static)
command -v tar >/dev/null || need_apt+=(tar)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
# TLS tests make certificates and drive the proxy with the openssl command; the PROXY
# protocol tests use HAProxy as the real peer on both sides.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "make deps: missing ${need_apt[*]}; install them (as root: apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The WebSocket and /ui tests use a real client library.
if ! python3 -c "import websockets" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check websockets 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages websockets
fi
# The fault tests drive the toxiproxy API with toxiproxy's own Python client; the load
# scenario (perf/locustfile.py) runs Locust headless.
for mod in toxiproxy:toxiproxy-python locust:locust; do
  if ! python3 -c "import ${mod%%:*}" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "${mod#*:}" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${mod#*:}"
  fi
done
# The Docker discovery tests need a running engine: start dockerd when it is not running and
# wait for it. If it cannot start, those tests fail with a message saying so.
if ! docker info >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  start_dockerd() {
    nohup dockerd "$@" >/tmp/switchyard-ci-dockerd.log 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && return 0
      kill -0 "$dockerd_pid" 2>/dev/null || return 1
      sleep 1
    done
    kill "$dockerd_pid" 2>/dev/null; sleep 2
    return 1
  }
  # Without iptables as a fallback (containers use the host network in the tests).
  start_dockerd || start_dockerd --iptables=false --bridge=none \
    || { echo "dockerd did not start:" >&2; tail -20 /tmp/switchyard-ci-dockerd.log >&2; }
fi

echo "make deps: everything the tests need is here"
