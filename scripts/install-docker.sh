#!/usr/bin/env bash
# Installs Docker (Debian's docker.io) when missing and starts the daemon when it is not running,
# also on machines without an init system (containers, CI). Idempotent; needs root.
set -euo pipefail

log() { echo "install-docker: $*" >&2; }

if docker info >/dev/null 2>&1; then
  log "Docker is already running"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "error: Docker is not running and this script needs root to install or start it; run it with sudo"
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io from Debian's repositories"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi
if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
  log "started docker with systemd"
else
  log "no init system: starting dockerd in the background (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "Docker is running: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 1
done
log "error: dockerd did not come up within 60 s; see /var/log/dockerd.log"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
