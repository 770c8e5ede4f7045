#!/usr/bin/env bash
# Install or update ccdwatch as a systemd service. Idempotent: run it again to upgrade.
#
#   sudo systemd/install.sh [--source DIR|PIP-SPEC] [--prefix /opt/ccdwatch] [--python python3] [--dry-run]
#
# Creates the `ccdwatch` system user, a virtual environment in PREFIX/venv with ccdwatch installed
# from SOURCE (default: this checkout), /var/lib/ccdwatch and /var/cache/ccdwatch, the config
# /etc/ccdwatch/ccdwatch.toml (only if absent: an existing one is never overwritten) and the unit
# /etc/systemd/system/ccdwatch.service, then reloads systemd. It does not start or restart the
# service: see the steps it prints at the end. --dry-run prints every change instead of making it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(dirname "$HERE")"
PREFIX=/opt/ccdwatch
PYTHON=python3
DRY_RUN=0
SERVICE_USER=ccdwatch
CONFIG_DIR=/etc/ccdwatch
UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/ccdwatch
CACHE_DIR=/var/cache/ccdwatch

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --source) SOURCE="$2"; shift 2 ;;
        --prefix) PREFIX="${2%/}"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

# Every change goes through run: printed (shell-quoted) in a dry run, executed otherwise.
run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

say() { printf '%s\n' "$*"; }

if [[ $DRY_RUN == 0 && $EUID -ne 0 ]]; then
    echo "install.sh: run as root (or with --dry-run to see what it would do)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: $PYTHON is missing or older than Python 3.11 (use --python)" >&2
    exit 1
fi
# ProtectHome=yes hides /home and /root from the service: an interpreter installed there (pyenv,
# conda, ~/.local) would make the venv unusable (status=203/EXEC).
base="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')"
if [[ $base == /home/* || $base == /root/* || $base == /run/user/* ]]; then
    msg="$PYTHON lives in $base, which the service cannot see (ProtectHome=yes); use a system Python, e.g. --python /usr/bin/python3"
    if [[ $DRY_RUN == 1 ]]; then
        echo "WARNING: $msg" >&2
    else
        echo "install.sh: $msg" >&2
        exit 1
    fi
fi
if [[ -d $SOURCE && ! -f $SOURCE/pyproject.toml ]]; then
    echo "install.sh: $SOURCE is not a ccdwatch checkout (no pyproject.toml)" >&2
    exit 1
fi

say "== system user"
if getent passwd "$SERVICE_USER" >/dev/null; then
    say "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "ccdwatch CCD reduction daemon" "$SERVICE_USER"
fi

say "== virtual environment in $PREFIX/venv"
run install -d -m 0755 "$PREFIX"
if [[ -x $PREFIX/venv/bin/python ]]; then
    say "venv exists: upgrading ccdwatch in it"
else
    run "$PYTHON" -m venv "$PREFIX/venv"
fi
# Not editable: the service must not depend on a checkout that people edit. pip compiles the
# bytecode now, as the service runs with PYTHONDONTWRITEBYTECODE on a read-only /opt.
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "$SOURCE"
if [[ -d $SOURCE ]]; then  # same version number, newer code: replace ccdwatch itself
    run "$PREFIX/venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$SOURCE"
fi
if [[ -f $SOURCE/systemd/README.md ]]; then
    run install -D -m 0644 "$SOURCE/systemd/README.md" "$PREFIX/doc/systemd.md"
fi

say "== directories"
# systemd creates these on start (StateDirectory=, CacheDirectory=); made here as well so that
# `ccdwatch db upgrade` can run as the service user before the first start.
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$CACHE_DIR"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"

say "== configuration $CONFIG_DIR/ccdwatch.toml"
if [[ -e $CONFIG_DIR/ccdwatch.toml ]]; then
    say "keeping the existing configuration; the current example goes to ccdwatch.toml.example"
    run install -m 0640 -o root -g "$SERVICE_USER" "$HERE/ccdwatch.toml" "$CONFIG_DIR/ccdwatch.toml.example"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$HERE/ccdwatch.toml" "$CONFIG_DIR/ccdwatch.toml"
fi

say "== unit $UNIT_DIR/ccdwatch.service"
# The unit with its /opt/ccdwatch paths pointed at PREFIX.
if [[ $DRY_RUN == 1 ]]; then
    say "+ sed s#/opt/ccdwatch#$PREFIX#g $HERE/ccdwatch.service > $UNIT_DIR/ccdwatch.service (mode 0644)"
else
    sed "s#/opt/ccdwatch#$PREFIX#g" "$HERE/ccdwatch.service" > "$UNIT_DIR/.ccdwatch.service.tmp"
    chmod 0644 "$UNIT_DIR/.ccdwatch.service.tmp"
    mv -f "$UNIT_DIR/.ccdwatch.service.tmp" "$UNIT_DIR/ccdwatch.service"
fi
if [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
else
    say "systemd is not running here: skipped 'systemctl daemon-reload'"
fi

incoming="$(sed -n 's/^incoming *= *"\([^"]*\)".*/\1/p' "$CONFIG_DIR/ccdwatch.toml" 2>/dev/null || true)"
incoming="${incoming:-/srv/camera}"
if [[ ! -d $incoming ]]; then
    say "NOTE: the camera directory $incoming does not exist yet; the service will not start without it"
fi

ccdwatch="$PREFIX/venv/bin/ccdwatch --config $CONFIG_DIR/ccdwatch.toml"
cat <<EOF

Next steps:
  1. Edit $CONFIG_DIR/ccdwatch.toml (paths.incoming = the camera's directory) and make the
     camera's files readable by the $SERVICE_USER user (see $PREFIX/doc/systemd.md).
  2. Create or upgrade the catalogue (stop the service first if it is running):
       systemctl stop ccdwatch
       sudo -u $SERVICE_USER $ccdwatch db upgrade
  3. Start it now and at every boot, and follow it:
       systemctl enable --now ccdwatch
       systemctl status ccdwatch
       journalctl -u ccdwatch -f
EOF
