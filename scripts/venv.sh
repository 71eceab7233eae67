#!/usr/bin/env bash
# Makes .venv with the project installed in editable mode and its test and dev tools.
# Reinstalls only when pyproject.toml changed, so a second run takes a moment.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "venv: error: no $python on PATH" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        # Debian's python3 keeps venv in a separate package.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$python" -m venv .venv
        else
            echo "venv: error: '$python -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi
stamp=.venv/.installed-from
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "venv: installing pytest-containers and its test tools into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[test,dev]'
    echo "$wanted" >"$stamp"
fi
