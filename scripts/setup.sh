#!/usr/bin/env bash
# Installs everything Lethe Edge needs on a fresh Debian machine with Node.js + npm, idempotently:
#   Deno (from npm, pinned in package.json), Mesa's Vulkan CPU driver (WebGPU on CPU), redis-server (multi-
#   instance session store and its tests), the npm dependencies Deno resolves, and the native CPU/CUDA libraries.
# Safe to run repeatedly: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[setup] $*" >&2; }

# 1. Deno from npm
if [ ! -x node_modules/.bin/deno ]; then
  log "installing Deno from npm"
  npm ci --no-audit --no-fund --loglevel=error
fi
export PATH="$PWD/node_modules/.bin:$PATH"

# 2. Debian packages (root or sudo; a clear message otherwise)
need=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium) # the playground's browser tests and `deno task screenshot`
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      log "missing Debian packages ${need[*]} and not root: install them with apt-get, then rerun"; exit 1
    fi
  fi
  log "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 3. npm packages used through Deno's import map (cached in node_modules/.deno)
deno install --quiet >/dev/null 2>&1 || deno install

# 3b. The real Deno binary where npm scripts find it first (node_modules/.lethe-bin, which neither npm nor Deno
#     manages). npm 11 skips deno's postinstall, so node_modules/.bin/deno stays a Node launcher that does not
#     pass signals on: SIGTERM would never reach the server's graceful shutdown.
real_deno=$(cd node_modules/deno && node -p 'require("./install_api.cjs").runInstall()')
mkdir -p node_modules/.lethe-bin
ln -sf "$real_deno" node_modules/.lethe-bin/deno

# 4. native libraries (CPU always when a compiler exists; CUDA when nvcc exists)
deno task --quiet build:native

# 5. the playground page's script (playground/src → playground/dist/app.js)
deno task --quiet build:playground
