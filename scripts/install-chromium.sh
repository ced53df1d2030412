#!/usr/bin/env bash
# Installs Chromium for the browser tests of the dashboard (packages ui and
# cmd/beacon drive a real headless Chromium with chromedp) when it is missing:
# Debian's `chromium` package, with apt-get, non-interactively, as root only.
# Not root, or no apt-get: it says so and does nothing; those tests then fail
# naming the install command (they never skip). BEACON_CHROMIUM names another
# binary.
#
# Usage: scripts/install-chromium.sh   (from any directory; scripts/test.sh runs it)
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

if [[ -n ${BEACON_CHROMIUM:-} ]]; then
	log "Chromium: $BEACON_CHROMIUM (BEACON_CHROMIUM)"
	exit 0
fi
for name in chromium chromium-browser google-chrome-stable google-chrome; do
	if path=$(command -v "$name" 2>/dev/null); then
		log "Chromium found: $path"
		exit 0
	fi
done
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
	echo "warning: Chromium not found, and not installing it (needs root and apt-get):" >&2
	echo "         the browser tests (./ui, ./cmd/beacon) will fail until you run: apt-get install -y chromium" >&2
	exit 0
fi
log "installing Chromium: apt-get install -y chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
log "Chromium installed: $(command -v chromium)"
