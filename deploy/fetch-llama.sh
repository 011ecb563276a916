#!/usr/bin/env bash
# Fetch the pinned llama.cpp (source bundle + prebuilt Linux x64 libraries) from the npm
# registry once, into a cache outside the build tree, and reuse it afterwards.
#
#   deploy/fetch-llama.sh [CACHE_DIR]      (default: $TIERGATE_CACHE or ~/.cache/tiergate)
#
# Leaves:  CACHE/llama-3.22.1/src       llama.cpp source (v0.5.0), AMX/gcc-12 patch applied
#          CACHE/llama-3.22.1/prebuilt  libllama.v0.5.0.so, libggml*.so (CPU variants)
# Prints nothing when everything is already there. npm checks the registry's integrity hash.
set -euo pipefail
NLC_VERSION=3.22.1
cache=${1:-${TIERGATE_CACHE:-$HOME/.cache/tiergate}}
root="$cache/llama-$NLC_VERSION"
here=$(cd "$(dirname "$0")" && pwd)
patch="$here/llama/amx-gcc12-ldtilecfg.patch"

if [ -f "$root/.complete" ]; then exit 0; fi
echo "tiergate: fetching llama.cpp (node-llama-cpp@$NLC_VERSION) from the npm registry into $root" >&2
mkdir -p "$cache/npm" "$root"
cd "$cache/npm"
for pkg in "node-llama-cpp@$NLC_VERSION" "@node-llama-cpp/linux-x64@$NLC_VERSION"; do
    tgz=$(echo "$pkg" | sed -e 's/^@//' -e 's/\//-/' -e 's/@/-/').tgz
    [ -f "$tgz" ] || npm pack --silent "$pkg" >/dev/null
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$cache/npm/node-llama-cpp-$NLC_VERSION.tgz" -C "$tmp" package/llama/gitRelease.bundle
rm -rf "$root/src"
git clone -q "$tmp/package/llama/gitRelease.bundle" "$root/src" 2>/dev/null
# gcc 12 drops the AMX tile-config stores (llama.cpp #20824): any source build must carry the fix.
(cd "$root/src" && git apply "$patch")

mkdir -p "$tmp/bins"
tar -xzf "$cache/npm/node-llama-cpp-linux-x64-$NLC_VERSION.tgz" -C "$tmp/bins"
rm -rf "$root/prebuilt"
mv "$tmp/bins/package/bins/linux-x64" "$root/prebuilt"
rm -f "$root/prebuilt/llama-addon.node"
touch "$root/.complete"
echo "tiergate: llama.cpp ready in $root" >&2
