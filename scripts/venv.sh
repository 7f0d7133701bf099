#!/usr/bin/env bash
# Create or reuse the project venv at <repo>/.venv and install fxprune (editable) with its dev extras.
# Idempotent: when the venv works and the stamp (hash of pyproject.toml, this script, the repo path and the
# package layout) matches, it does nothing and returns in well under a second.
#
# Environment knobs:
#   PYTHON=python3.11        interpreter used to create the venv (default: python3)
#   FXPRUNE_TORCH_SPEC="..."  torch/torchvision pins installed first
#                             (default: "torch==2.14.1 torchvision==0.29.1", the releases on this machine's disk)
#   FXPRUNE_VENV_FORCE=1      reinstall even when the stamp matches
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.fxprune-install-stamp"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${FXPRUNE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

log() { echo "[venv.sh] $*" >&2; }

want_stamp() {
    # the package layout is in it too: an editable install made before a package's __init__.py existed
    # maps it as a namespace package, so a layout change re-runs the (fast) editable install
    { cat "$ROOT/pyproject.toml" "$ROOT/scripts/venv.sh"; echo "$ROOT" "$TORCH_SPEC"
      (cd "$ROOT" && find fxprune -name __init__.py 2>/dev/null | LC_ALL=C sort); } | sha256sum | cut -d' ' -f1
}

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import sys" >/dev/null 2>&1
}

if ! venv_works; then
    [ -e "$VENV" ] && { log "existing $VENV is broken; recreating it"; rm -rf "$VENV"; }
    log "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV" || {
        log "'$PYTHON -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"
        exit 1
    }
fi

STAMP_WANT="$(want_stamp)"
if [ -z "${FXPRUNE_VENV_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] \
    && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('fxprune') is None)" 2>/dev/null; then
    exit 0
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
start=$SECONDS
# torch first, pinned: an unpinned resolve may pick a multi-GB wheel from the index.
log "installing $TORCH_SPEC"
# shellcheck disable=SC2086
"${PIP[@]}" install -q $TORCH_SPEC
log "installing fxprune (editable) with [dev] extras"
"${PIP[@]}" install -q -e "$ROOT[dev]"
echo "$STAMP_WANT" > "$STAMP"
log "done in $((SECONDS - start))s"
