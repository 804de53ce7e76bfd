#!/usr/bin/env bash
# Installs Docker (Debian's docker.io) when missing and starts the daemon when it is not running,
# also on machines without an init system (containers, CI). Idempotent; needs root to install or start.
#
#   scripts/install-docker.sh            Docker only
#   scripts/install-docker.sh --gvisor   also gVisor: Debian's runsc, registered with Docker as the runtime
#                                        `runsc` (its own network off), for `sandbox run --isolation gvisor`
set -euo pipefail

log() { echo "install-docker: $*" >&2; }

gvisor=0
for arg in "$@"; do
  case "$arg" in
    --gvisor) gvisor=1 ;;
    *) log "error: unknown option '$arg'; use --gvisor or nothing"; exit 2 ;;
  esac
done

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "error: $1 needs root; run this script as root (or with sudo where it exists)"
    exit 1
  fi
}

runsc_registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

start_dockerd() {
  if [ -d /run/systemd/system ] && systemctl restart docker 2>/dev/null; then
    log "started docker with systemd"
  else
    log "no init system: starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >>/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      log "Docker is running: $(docker version --format '{{.Server.Version}}')"
      return 0
    fi
    sleep 1
  done
  log "error: dockerd did not come up within 60 s; see /var/log/dockerd.log"
  tail -n 20 /var/log/dockerd.log >&2 || true
  exit 1
}

stop_dockerd() {
  if [ -d /run/systemd/system ] && systemctl stop docker 2>/dev/null; then
    return 0
  fi
  pkill -TERM -x dockerd || true
  for _ in $(seq 1 60); do
    pgrep -x dockerd >/dev/null || return 0
    sleep 1
  done
  log "error: dockerd did not stop within 60 s"
  exit 1
}

# Adds the runsc runtime to /etc/docker/daemon.json, keeping whatever else the file holds.
register_runsc() {
  local runsc
  runsc="$(command -v runsc)"
  mkdir -p /etc/docker
  python3 - "$runsc" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  log "registered runsc ($runsc) in /etc/docker/daemon.json"
}

if ! command -v dockerd >/dev/null 2>&1; then
  need_root "installing Docker"
  log "installing docker.io from Debian's repositories"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

if [ "$gvisor" = 1 ] && ! runsc_registered; then
  need_root "installing gVisor"
  if ! command -v runsc >/dev/null 2>&1; then
    log "installing runsc (gVisor) from Debian's repositories"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q runsc
  fi
  register_runsc
  if docker info >/dev/null 2>&1; then
    log "restarting dockerd so that it reads the new runtime (running containers stop)"
    stop_dockerd
  fi
fi

if docker info >/dev/null 2>&1; then
  log "Docker is already running"
else
  need_root "starting dockerd"
  start_dockerd
fi

if [ "$gvisor" = 1 ]; then
  if runsc_registered; then
    log "gVisor is ready: sandbox run --isolation gvisor"
  else
    log "error: Docker does not list the runsc runtime after the restart; see /var/log/dockerd.log"
    exit 1
  fi
fi
