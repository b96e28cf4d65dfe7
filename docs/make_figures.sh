#!/usr/bin/env bash
# Regenerate the README's figures with the CLI, from the demo's sample run (bundled images only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
scopefx demo --out run >/dev/null
scopefx focus run/run --calibration run/calibration.json --cell-px 128 --quiet \
    --plot "$here/images/focus.png" --maps "$here/images/focus_maps.png"
cp run/calibration.png "$here/images/calibration.png"
cp run/mosaic.png "$here/images/mosaic.png"   # made by `scopefx fuse --preview` in the demo
echo "wrote $here/images/{focus,focus_maps,calibration,mosaic}.png"
