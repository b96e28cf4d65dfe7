#!/usr/bin/env bash
# Create the isolated environment of the fusion benchmark's peer, multiview-stitcher.
#
#   bash bench/setup_peer.sh            # creates bench/.venv-mvs (skips if already complete)
#   PYTHON=python3.12 bash bench/setup_peer.sh
#   MVS_VENV=/somewhere/else bash bench/setup_peer.sh
#
# Installs the pinned versions in bench/peer-requirements.txt with pip (from the package index
# pip is configured for; nothing else is downloaded). Idempotent: when the venv exists, was
# installed from the current requirements file and imports what bench/_mvs_peer.py needs, it
# does nothing. Needs Python >= 3.11. Then run the peer with bench/.venv-mvs/bin/python
# bench/_mvs_peer.py, and check it with bench/.venv-mvs/bin/python bench/_mvs_selfcheck.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${MVS_VENV:-$here/.venv-mvs}"
req="$here/peer-requirements.txt"
py="${PYTHON:-python3}"
vpy="$venv/bin/python"
stamp="$venv/.peer-requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"

importable() {
    "$vpy" - <<'EOF' >/dev/null 2>&1
import imagecodecs, joblib, psutil, skimage, tifffile, zarr  # noqa: F401
from multiview_stitcher import fusion, io, misc_utils, ngff_utils, param_utils  # noqa: F401
EOF
}

if [[ -x "$vpy" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && importable; then
    echo "setup_peer: $venv is up to date ($("$vpy" -c \
        'import multiview_stitcher as m; print("multiview-stitcher", m.__version__)'))"
    exit 0
fi

if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup_peer: $py is $("$py" -V 2>&1); multiview-stitcher's pins need Python >= 3.11" \
        "(set PYTHON=...)" >&2
    exit 1
fi

if [[ ! -x "$vpy" ]]; then
    echo "setup_peer: creating $venv with $("$py" -V 2>&1)"
    "$py" -m venv "$venv"
fi

echo "setup_peer: installing $req"
rm -f "$stamp"
"$vpy" -m pip install --disable-pip-version-check -q -r "$req"

if ! importable; then
    echo "setup_peer: installed, but multiview-stitcher does not import in $venv" >&2
    exit 1
fi
echo "$want" > "$stamp"
echo "setup_peer: done ($("$vpy" -c \
    'import multiview_stitcher as m; print("multiview-stitcher", m.__version__)'))"
