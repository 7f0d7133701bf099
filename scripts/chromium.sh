#!/usr/bin/env bash
# Make a headless Chromium available for the HTML report's browser test (tests/test_report.py).
# Idempotent: exits 0 at once when `chromium` or `chromium-browser` is on PATH. Otherwise installs Debian's
# `chromium` package with apt-get (no recommends); runs `apt-get update` and retries only when the first
# install fails. Uses sudo only when not root. Concurrent callers are serialised with a lock file, and apt
# waits for the dpkg lock instead of failing, so several test set-ups may call it at once.
#
# Prints the binary's path on stdout when done; messages go to stderr. Exit 1 with a clear error otherwise.
set -euo pipefail

log() { echo "[chromium.sh] $*" >&2; }
die() { echo "[chromium.sh] ERROR: $*" >&2; exit 1; }

found() {
    local b
    for b in chromium chromium-browser; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}

if path="$(found)"; then echo "$path"; exit 0; fi

command -v apt-get >/dev/null 2>&1 \
    || die "no chromium on PATH and no apt-get to install it: install Chromium yourself" \
           "(a 'chromium' or 'chromium-browser' binary on PATH)"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 \
        || die "no chromium on PATH, not root and no sudo: run 'apt-get install -y chromium' as root"
    SUDO=(sudo -n)
fi

# one installer at a time (another test set-up may be installing right now)
LOCK="${TMPDIR:-/tmp}/fxprune-chromium.lock"
if command -v flock >/dev/null 2>&1 && touch "$LOCK" 2>/dev/null; then
    exec 9>"$LOCK"
    log "waiting for the install lock $LOCK ..."
    flock -w 900 9 || die "another chromium install held $LOCK for 15 minutes; remove it if stale"
    if path="$(found)"; then log "installed meanwhile by another caller"; echo "$path"; exit 0; fi
fi

APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
install() { "${APT[@]}" install --no-install-recommends chromium >&2; }

log "installing Debian's chromium (apt-get install --no-install-recommends chromium) ..."
if ! install; then
    log "install failed; running apt-get update and retrying ..."
    "${APT[@]}" update >&2 || die "apt-get update failed (no network or no apt sources?)"
    install || die "apt-get install chromium failed; see apt's output above"
fi

path="$(found)" || die "apt-get installed chromium but no 'chromium'/'chromium-browser' is on PATH"
log "ok: $path"
echo "$path"
