#!/usr/bin/env bash
# Bootstrap the locked environment: uv (installed with pip if missing), an installed CPython 3.12 (from PATH or
# pyenv; uv is never allowed to download one), then `uv sync --locked`.
#   scripts/bootstrap.sh              set everything up (idempotent, quick when already done)
#   scripts/bootstrap.sh --print-uv   print the uv command to use
set -euo pipefail
cd "$(dirname "$0")/.."

find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  for c in "$HOME/.local/bin/uv" "$(python3 -m site --user-base 2>/dev/null)/bin/uv"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
  return 1
}

if [ "${1:-}" = "--print-uv" ]; then
  find_uv || echo uv
  exit 0
fi

if ! UV=$(find_uv); then
  echo "[bootstrap] uv not found: installing it from PyPI with pip (python3 -m pip install --user uv)"
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  UV=$(find_uv) || { echo "[bootstrap] ERROR: uv installed but not found on PATH or ~/.local/bin" >&2; exit 1; }
fi

find_python312() {
  local c
  if [ -n "${GAFLOW_PYTHON:-}" ]; then echo "$GAFLOW_PYTHON"; return; fi
  for c in python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1; then
      c=$(command -v "$c")
      # pyenv shims for non-global versions fail: ask the interpreter for its real path
      if real=$("$c" -c 'import sys; assert sys.version_info[:2] == (3, 12); print(sys.executable)' 2>/dev/null); then
        echo "$real"; return
      fi
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V -r); do
      c="$(pyenv root)/versions/$v/bin/python3.12"
      [ -x "$c" ] && { echo "$c"; return; }
    done
  fi
  return 1
}

if ! PY=$(find_python312); then
  echo "[bootstrap] ERROR: no Python 3.12 found (looked at GAFLOW_PYTHON, python3.12/python3 on PATH, pyenv)." >&2
  echo "[bootstrap] Install one (e.g. 'pyenv install 3.12') or set GAFLOW_PYTHON=/path/to/python3.12." >&2
  exit 1
fi

# Headless MuJoCo rendering (MetaWorld, LIBERO) needs Mesa's EGL + llvmpipe. Install them when missing and we
# are root with apt (CI, fresh Debian machines); otherwise say plainly what is missing.
need_gl=()
ldconfig -p 2>/dev/null | grep -q 'libEGL\.so\.1 ' || need_gl+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa\.so\.0 ' || need_gl+=(libegl-mesa0)
ldconfig -p 2>/dev/null | grep -Eq 'lib(OpenGL\.so\.0|GL\.so\.1) ' || need_gl+=(libgl1)
compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null || compgen -G "/usr/lib*/dri/swrast_dri.so" >/dev/null \
  || need_gl+=(libgl1-mesa-dri)
if [ ${#need_gl[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing Mesa/EGL for headless rendering: ${need_gl[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_gl[@]}"
  else
    echo "[bootstrap] WARNING: headless rendering needs: ${need_gl[*]} (apt-get install them; see scripts/check_headless.sh)" >&2
  fi
fi

export UV_PYTHON_DOWNLOADS=never
unset PYTHONDONTWRITEBYTECODE  # a venv without .pyc files recompiles torch/lerobot on every import (~20 s CPU)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "[bootstrap] creating .venv with $PY (first run downloads several GB of wheels: torch, lerobot, mujoco)"
fi
"$UV" sync --locked --python "$PY" --quiet --compile-bytecode
