#!/usr/bin/env bash
# Can MuJoCo render headless here? Lists the Mesa/EGL/OSMesa libraries it needs (and the Debian package of each
# missing one), then renders one MetaWorld frame with MUJOCO_GL=egl and with MUJOCO_GL=osmesa in fresh processes.
#   scripts/check_headless.sh            exit 0 if at least one backend renders
# A fresh Debian/Ubuntu machine needs (no GPU: Mesa's llvmpipe renders on the CPU):
#   sudo apt-get install -y --no-install-recommends libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri   # EGL (default)
#   sudo apt-get install -y --no-install-recommends libosmesa6                                     # OSMesa (optional)
set -uo pipefail
cd "$(dirname "$0")/.."

echo "== system libraries (ldconfig)"
missing=()
check() {  # check <soname-regex> <package> <what>
  if ldconfig -p 2>/dev/null | grep -Eq "$1"; then echo "  [ok]      $3"; else echo "  [MISSING] $3  (apt: $2)"; missing+=("$2"); fi
}
check 'libEGL\.so\.1 '      libegl1          'libEGL.so.1 (EGL loader, glvnd)'
check 'libEGL_mesa\.so\.0 ' libegl-mesa0     'libEGL_mesa.so.0 (Mesa EGL vendor)'
check 'lib(OpenGL\.so\.0|GL\.so\.1) ' libgl1 'libOpenGL.so.0 / libGL.so.1 (GL entry points)'
if compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null || compgen -G "/usr/lib*/dri/swrast_dri.so" >/dev/null; then
  echo "  [ok]      swrast_dri.so (llvmpipe CPU rasterizer)"
else
  echo "  [MISSING] swrast_dri.so (llvmpipe CPU rasterizer)  (apt: libgl1-mesa-dri)"; missing+=(libgl1-mesa-dri)
fi
check 'libOSMesa\.so'       libosmesa6       'libOSMesa.so (OSMesa, optional fallback)'
if [ ${#missing[@]} -gt 0 ]; then
  echo "  install: sudo apt-get install -y --no-install-recommends ${missing[*]}"
fi

echo "== python check (gaflow.envs.render)"
if command -v uv >/dev/null 2>&1 && [ -f uv.lock ]; then
  PY=(uv run python)
else
  PY=(python3)
fi
"${PY[@]}" -m gaflow.envs.render
