# Shared by scripts/*.sh: logging and installing missing Debian packages.

log() { printf '\n==> %s\n' "$*" >&2; }

need_cmd() { command -v "$1" >/dev/null 2>&1; }

# ensure_pkg COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is missing.
apt_updated=0
ensure_pkg() {
  if ! need_cmd "$1" && [ ! -x "/usr/bin/$1" ] && [ ! -x "/usr/sbin/$1" ]; then
    if [ "$apt_updated" = 0 ]; then
      log "apt-get update"
      apt-get update -qq
      apt_updated=1
    fi
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}
