#!/usr/bin/env bash
# Sets up what `sandbox run` needs on Debian or Ubuntu, in one command. Idempotent: what is there is kept.
#   - Docker (the distribution's docker.io), started also on machines without an init system (containers, CI);
#   - debootstrap, which `sandbox images build` falls back to when it cannot pull its base image (no Docker
#     Hub), unless a base image is already here;
#   - python3-venv where Python cannot make a virtual environment (Debian's Python refuses pip outside one);
#   - for a user who is not root (or who ran it through sudo): membership of the docker group, so that
#     `sandbox` reaches the daemon without sudo.
# Run it as root (no sudo needed), or as a user with sudo: only the steps that need root go through sudo.
#
#   scripts/install-docker.sh            the above
#   scripts/install-docker.sh --gvisor   also gVisor: the distribution's runsc, registered with Docker as the
#                                        runtime `runsc` (its own network off), for `sandbox run --isolation gvisor`
#
# Afterwards, `sandbox doctor` checks the whole set-up.
set -euo pipefail

exec 3>&2 # messages go to the original stderr, also from calls whose output is silenced
log() { echo "install-docker: $*" >&3; }
die() {
  log "error: $*"
  exit 1
}

gvisor=0
for arg in "$@"; do
  case "$arg" in
    --gvisor) gvisor=1 ;;
    *) log "error: unknown option '$arg'; use --gvisor or nothing"; exit 2 ;;
  esac
done

# sandbox/images.py's DEFAULT_BASE_IMAGE and BOOTSTRAP_IMAGE: with either here, no debootstrap is needed.
BASE_IMAGES=(python:3.11-slim adversarial-sandbox/bootstrap-bookworm:0.1)
DOCKERD_LOG=/var/log/dockerd.log

is_root() { [ "$(id -u)" = 0 ]; }
can_root() { is_root || command -v sudo >/dev/null 2>&1; }

# A normal user's PATH often lacks /usr/sbin, where dockerd and debootstrap live.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
path_of() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }; }

# Root runs a command as it is; anyone else goes through sudo, asked once (it may want a password).
sudo_ok=0
as_root() {
  if is_root; then
    "$@"
    return
  fi
  local why="run this script as root, or get sudo rights (where Docker runs already, \`usermod -aG docker $(id -un)\` by an administrator is enough)"
  command -v sudo >/dev/null 2>&1 || die "\`$*\` needs root and there is no sudo: $why"
  if [ "$sudo_ok" = 0 ]; then
    sudo -v || die "\`$*\` needs root and $(id -un) may not use sudo: $why"
    sudo_ok=1
  fi
  sudo "$@"
}

# Minimal images have no procps (pgrep, pkill): dockerd is found through /proc, readable by anyone.
dockerd_pids() {
  local proc
  for proc in /proc/[0-9]*; do
    [ "$(cat "$proc/comm" 2>/dev/null)" = dockerd ] && alive "${proc#/proc/}" && echo "${proc#/proc/}"
  done
  return 0
}

# A process that has exited but was not reaped yet (a zombie) counts as gone.
alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

apt_updated=0
# apt_install WHAT PACKAGE...: WHAT says what to install by hand where apt cannot.
apt_install() {
  local what="$1"
  shift
  command -v apt-get >/dev/null 2>&1 ||
    die "no apt-get here (this script knows Debian and Ubuntu): install $what yourself, then run this script again"
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -q || die "apt-get update failed; fix the package sources, or install $what yourself"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
    die "apt-get could not install $*; install $what yourself, then run this script again"
}

# `docker` as this user where it may use the daemon, else as root (a user not yet in the docker group).
dk() {
  if is_root || docker info >/dev/null 2>&1; then
    docker "$@"
  else
    as_root docker "$@"
  fi
}

daemon_up() {
  docker info >/dev/null 2>&1 && return 0
  is_root && return 1
  can_root && as_root docker info >/dev/null 2>&1
}

runsc_registered() { dk info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

start_dockerd() {
  if [ -d /run/systemd/system ] && as_root systemctl restart docker 2>/dev/null; then
    log "started docker with systemd"
  else
    log "no init system: starting dockerd in the background (log: $DOCKERD_LOG)"
    # Its own session, so that it outlives this script, the terminal and sudo's pseudo-terminal; and none of
    # this script's descriptors (fd 3 included), or a caller reading its output would wait for dockerd to exit.
    as_root sh -c "nohup setsid '$(path_of dockerd)' >>$DOCKERD_LOG 2>&1 </dev/null 3>&- &" 3>&-
  fi
  for _ in $(seq 1 60); do
    if daemon_up; then
      log "Docker is running: $(dk version --format '{{.Server.Version}}')"
      return 0
    fi
    sleep 1
  done
  log "error: dockerd did not come up within 60 s; see $DOCKERD_LOG"
  as_root tail -n 20 "$DOCKERD_LOG" >&2 || true
  exit 1
}

stop_dockerd() {
  if [ -d /run/systemd/system ] && as_root systemctl stop docker 2>/dev/null; then
    return 0
  fi
  # The daemon's pid file names this host's dockerd; a dockerd inside a container shows in /proc too.
  local pids pid
  pids="$(cat /var/run/docker.pid 2>/dev/null || true)"
  [ -n "$pids" ] && alive "$pids" || pids="$(dockerd_pids)"
  [ -z "$pids" ] || as_root sh -c "kill -TERM $(echo $pids)" || true # kill is a shell builtin: no procps needed
  for _ in $(seq 1 60); do
    local running=0
    for pid in $pids; do
      alive "$pid" && running=1
    done
    [ "$running" = 1 ] || return 0
    sleep 1
  done
  die "dockerd did not stop within 60 s"
}

# Adds the runsc runtime to /etc/docker/daemon.json, keeping whatever else the file holds.
register_runsc() {
  local runsc
  runsc="$(path_of runsc)"
  have python3 || apt_install "python3" python3
  as_root mkdir -p /etc/docker
  as_root python3 - "$runsc" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  log "registered runsc ($runsc) in /etc/docker/daemon.json"
}

base_image_here() {
  local image
  for image in "${BASE_IMAGES[@]}"; do
    dk image inspect "$image" >/dev/null 2>&1 && return 0
  done
  return 1
}

# Whoever will run `sandbox`: this user, or the one who called sudo. Root needs no group.
docker_user() {
  if is_root; then echo "${SUDO_USER:-}"; else id -un; fi
}

grant_docker_group() {
  local user
  user="$(docker_user)"
  if [ -z "$user" ] || [ "$user" = root ]; then
    return 0
  fi
  case " $(id -nG "$user") " in
    *" docker "*) return 0 ;;
  esac
  if ! getent group docker >/dev/null; then
    log "warning: there is no docker group, so $user needs sudo for Docker; create it and restart dockerd"
    return 0
  fi
  as_root usermod -aG docker "$user"
  log "added $user to the docker group (whoever is in it controls Docker, so it is as good as root)"
}

if ! have dockerd; then
  log "installing docker.io from the distribution's repositories"
  apt_install "Docker (https://docs.docker.com/engine/install/)" docker.io
fi

if [ "$gvisor" = 1 ] && ! runsc_registered; then
  if ! have runsc; then
    log "installing runsc (gVisor) from the distribution's repositories"
    apt_install "gVisor's runsc (https://gvisor.dev/docs/user_guide/install/)" runsc
  fi
  register_runsc
  if daemon_up; then
    log "restarting dockerd so that it reads the new runtime (running containers stop)"
    stop_dockerd
  fi
fi

if daemon_up; then
  log "Docker is already running"
elif ! can_root && [ -n "$(dockerd_pids)" ]; then
  die "dockerd is running but $(id -un) may not use it and there is no sudo: as root, run \`usermod -aG docker $(id -un)\`, then log in again"
else
  start_dockerd
fi

if ! have debootstrap; then
  if base_image_here; then
    log "debootstrap not needed: a base image for \`sandbox images build\` is already here"
  else
    log "installing debootstrap: \`sandbox images build\` needs it where python:3.11-slim cannot be pulled"
    apt_install "debootstrap" debootstrap
  fi
fi

# Debian's own Python refuses `pip install` outside a virtual environment, and makes one only with python3-venv.
if have python3 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "installing python3-venv: \`python3 -m venv .venv\` makes the environment to install the sandbox into"
  apt_install "python3-venv" python3-venv
fi

grant_docker_group

if [ "$gvisor" = 1 ]; then
  if runsc_registered; then
    log "gVisor is ready: sandbox run --isolation gvisor"
  else
    die "Docker does not list the runsc runtime after the restart; see $DOCKERD_LOG"
  fi
fi

if ! is_root && ! docker info >/dev/null 2>&1; then
  log "this shell is not in the docker group yet: log in again (or run \`newgrp docker\`) before \`sandbox run\`"
fi
log "done; \`sandbox doctor\` checks everything a run needs"
