#!/bin/sh
# An autoscale hook: Switchyard runs it with SWITCHYARD_ACTION=scale_up|scale_down,
# SWITCHYARD_CLUSTER, SWITCHYARD_BACKENDS, SWITCHYARD_CANDIDATE (scale_down) and
# SWITCHYARD_ADMIN / SWITCHYARD_TOKEN_FILE (which `switchyard ctl` reads), and the event JSON
# on stdin. It has 10 s; then it is killed with its process group.
#
# This one starts a demo backend per scale_up (in a session of its own, so it outlives the
# hook) and stops the suggested one on scale_down. Replace the two marked lines with your
# provisioning (start a VM or a container, return its address).
set -eu
state="${SWITCHYARD_HOOK_STATE:-/var/lib/switchyard/hook}"
mkdir -p "$state"
case "$SWITCHYARD_ACTION" in
scale_up)
  port=$((20001 + $(ls "$state" | wc -l)))
  setsid "$SWITCHYARD_EXE" demo-backend --listen "127.0.0.1:$port" </dev/null >/dev/null 2>&1 &  # provision
  echo $! > "$state/127.0.0.1:$port"
  sleep 0.2
  "$SWITCHYARD_EXE" ctl backend add "$SWITCHYARD_CLUSTER" "127.0.0.1:$port"
  ;;
scale_down)
  "$SWITCHYARD_EXE" ctl backend delete "$SWITCHYARD_CLUSTER" "$SWITCHYARD_CANDIDATE"
  if [ -f "$state/$SWITCHYARD_CANDIDATE" ]; then
    kill "$(cat "$state/$SWITCHYARD_CANDIDATE")" || true                                  # release
    rm -f "$state/$SWITCHYARD_CANDIDATE"
  fi
  ;;
esac
