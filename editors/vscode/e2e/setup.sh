#!/bin/sh
# Installs what the real-VS-Code test (code-server.mjs) needs, from registries only:
#   - Debian: Chromium (Playwright's own browser download is not reachable) and the headers
#     code-server's native modules build against (kerberos, keytar, native-keymap);
#   - npm: code-server 4.100.3, the newest release whose engines accept Node 20 (4.103 wants 22,
#     current releases 24), and playwright-core, which drives the system Chromium.
# @vscode/ripgrep (inside code-server) downloads rg from GitHub at install time; it is given
# Debian's ripgrep 13.0.0 through the download cache it checks first.
# Takes about 8 minutes on two cores (native builds). Then: make vscode-e2e.
set -eu
cd "$(dirname "$0")"

PKGS="chromium ripgrep build-essential pkg-config python3 libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else
    echo "setup.sh: install these Debian packages first:$missing" >&2; exit 1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

RG_VERSION=1.15.11   # @vscode/ripgrep in code-server 4.100.3; it wants ripgrep v13.0.0-10
cache="${TMPDIR:-/tmp}/vscode-ripgrep-cache-$RG_VERSION"
asset="$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"
if [ ! -f "$asset" ]; then
  mkdir -p "$cache"
  tar czf "$asset" -C "$(dirname "$(command -v rg)")" rg
fi

(cd .. && npm ci --no-audit --no-fund && npm run package)
# code-server's postinstall refuses to run as root without unsafe-perm, and node-pty's
# runs `npx node-gyp`, which must not stop to ask.
npm_config_unsafe_perm=true npm_config_yes=true npm ci --no-audit --no-fund
echo "setup.sh: ready (code-server $(node_modules/.bin/code-server --version | head -1))"
