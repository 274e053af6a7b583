"""Headless MuJoCo rendering: backend choice, a fast offscreen renderer, and a plain-words diagnosis.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` once, when ``mujoco`` is first imported, and PyOpenGL picks its
platform from ``PYOPENGL_PLATFORM`` the same way, so the choice has to be made before either is imported:
:func:`configure_gl_backend` does that (``egl`` when unset and the EGL pieces are installed, ``osmesa`` when only
OSMesa is, and never overrides a value the user set). The renderer below creates its GL context from the chosen
backend module directly, so it also works when ``mujoco`` was imported earlier by someone else.

On a machine without a GPU both backends run Mesa's llvmpipe on the CPU, which is slow at MetaWorld's defaults
(4096² shadow map, 4× multisampling, reflections). :class:`OffscreenRenderer` turns those off before the GL
context is made (``offsamples``/``shadowsize`` are read when the context is created; the scene flags at every
render), which makes 84-px frames ~2–3× faster; images then differ slightly from MetaWorld's stock renders.

``python -m gaflow.envs.render`` (or ``scripts/check_headless.sh``) prints which system pieces are present and
tries one render with each backend.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_DISABLED = ("disable", "disabled", "off", "false", "0")

# Debian/Ubuntu package that provides each piece (checked on Debian 12 with Mesa 22.3).
APT_EGL = "libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri"
APT_OSMESA = "libosmesa6"
INSTALL_HINT = (
    f"sudo apt-get install -y --no-install-recommends {APT_EGL}   # EGL (default)\n"
    f"sudo apt-get install -y --no-install-recommends {APT_OSMESA} libgl1-mesa-dri  # OSMesa fallback"
)


@dataclass(frozen=True)
class GLPiece:
    """One system library headless rendering needs; ``present`` says whether it loads here."""

    name: str
    backend: str  # "egl" | "osmesa"
    package: str  # Debian package providing it
    present: bool


def _loads(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def _mesa_egl_vendor_present() -> bool:
    # glvnd's libEGL only dispatches to vendors announced by a JSON file; Mesa's is 50_mesa.json.
    dirs = os.environ.get("__EGL_VENDOR_LIBRARY_DIRS", "/usr/share/glvnd/egl_vendor.d:/etc/glvnd/egl_vendor.d")
    return any(p.is_file() for d in dirs.split(":") if Path(d).is_dir() for p in Path(d).glob("*mesa*.json"))


def _software_dri_present() -> bool:
    # llvmpipe, Mesa's CPU rasterizer, ships as swrast_dri.so (libgl1-mesa-dri); EGL on a GPU-less box needs it.
    roots = [os.environ.get("LIBGL_DRIVERS_PATH", "")] + [
        "/usr/lib/x86_64-linux-gnu/dri",
        "/usr/lib/aarch64-linux-gnu/dri",
        "/usr/lib64/dri",
        "/usr/lib/dri",
    ]
    return any(r and Path(r, "swrast_dri.so").is_file() for r in roots)


def gl_pieces() -> list[GLPiece]:
    """Probe the system libraries each backend needs (loading them is harmless; nothing is initialised)."""
    gl_or_opengl = _loads("libOpenGL.so.0") or _loads("libGL.so.1")
    return [
        GLPiece("libEGL.so.1 (EGL loader)", "egl", "libegl1", _loads("libEGL.so.1")),
        GLPiece("Mesa EGL vendor (libEGL_mesa.so.0 + 50_mesa.json)", "egl", "libegl-mesa0",
                _loads("libEGL_mesa.so.0") and _mesa_egl_vendor_present()),
        GLPiece("libOpenGL.so.0 or libGL.so.1 (GL entry points)", "egl", "libgl1", gl_or_opengl),
        GLPiece("swrast_dri.so (llvmpipe CPU rasterizer)", "egl", "libgl1-mesa-dri", _software_dri_present()),
        GLPiece("libOSMesa.so (OSMesa)", "osmesa", "libosmesa6",
                _loads("libOSMesa.so.8") or _loads("libOSMesa.so.6") or _loads("libOSMesa.so")),
    ]


def backend_available(backend: str, pieces: list[GLPiece] | None = None) -> bool:
    pieces = gl_pieces() if pieces is None else pieces
    return all(p.present for p in pieces if p.backend == backend)


def configure_gl_backend() -> str:
    """Choose MuJoCo's GL backend before ``mujoco`` is imported; return it. A user-set ``MUJOCO_GL`` wins."""
    backend = os.environ.get("MUJOCO_GL", "").lower().strip()
    if not backend:
        pieces = gl_pieces()
        if backend_available("egl", pieces) or not backend_available("osmesa", pieces):
            backend = "egl"  # default, and the one to diagnose when neither is complete
        else:
            backend = "osmesa"
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def headless_report() -> str:
    """A plain-words account of what headless rendering needs here and what is missing."""
    pieces = gl_pieces()
    lines = [f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')}  "
             f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM', '(unset)')}"]
    for p in pieces:
        lines.append(f"  [{'ok' if p.present else 'MISSING'}] {p.backend:6s} {p.name}  (apt: {p.package})")
    try:
        import OpenGL  # noqa: F401
    except ImportError:
        lines.append("  [MISSING] python package PyOpenGL (pip install PyOpenGL); MuJoCo's egl/osmesa need it")
    missing_egl = sorted({p.package for p in pieces if p.backend == "egl" and not p.present})
    missing_osmesa = sorted({p.package for p in pieces if p.backend == "osmesa" and not p.present})
    if not missing_egl:
        lines.append("EGL: complete.")
    else:
        lines.append(f"EGL: missing {', '.join(missing_egl)} → sudo apt-get install -y --no-install-recommends "
                     f"{' '.join(missing_egl)}")
    if not missing_osmesa:
        lines.append("OSMesa: complete (use it with MUJOCO_GL=osmesa).")
    else:
        lines.append(f"OSMesa (optional fallback): missing {', '.join(missing_osmesa)} → sudo apt-get install -y "
                     f"--no-install-recommends {' '.join(missing_osmesa)}")
    return "\n".join(lines)


class HeadlessRenderError(RuntimeError):
    """Rendering could not start; the message names the missing system pieces and how to install them."""


def import_mujoco() -> Any:
    """``import mujoco``, explaining failures of its GL backend import (with MUJOCO_GL=egl/osmesa, ``import
    mujoco`` itself loads that backend's libraries and fails when they are missing)."""
    configure_gl_backend()
    try:
        import mujoco
    except (ImportError, OSError, AttributeError) as exc:
        backend = os.environ.get("MUJOCO_GL", "")
        raise HeadlessRenderError(
            f"`import mujoco` failed with MUJOCO_GL={backend} ({type(exc).__name__}: {exc}): the {backend} "
            f"libraries are missing or broken.\n{headless_report()}\nInstall:\n{INSTALL_HINT}"
        ) from exc
    return mujoco


def _make_gl_context(backend: str, width: int, height: int) -> Any:
    if backend == "egl":
        from mujoco.egl import GLContext

        # A GLContext whose __init__ failed still runs __del__, which reads self._context: give it a default so a
        # missing EGL piece reports once (our HeadlessRenderError) instead of twice.
        if not hasattr(GLContext, "_context"):
            GLContext._context = None
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    elif backend in ("glfw", "glx", "enable", "enabled", "on", "true", "1"):
        from mujoco.glfw import GLContext
    else:
        raise HeadlessRenderError(f"MUJOCO_GL={backend!r} is not a rendering backend (use egl or osmesa)")
    return GLContext(width, height)


class OffscreenRenderer:
    """Render one named camera of a MuJoCo model to uint8 RGB (H, W, 3), upright and unmirrored.

    ``fast=True`` turns off multisampling, shadows, reflections and the skybox (see the module docstring).
    Cameras whose image "up" axis points downward in the world (MetaWorld's ``corner*`` cameras are defined that
    way) come out rotated by 180°; they are rotated back — a 180° rotation, not a vertical flip, which would
    mirror the scene.
    """

    def __init__(self, model: Any, data: Any, camera: str, width: int, height: int, fast: bool = True) -> None:
        import mujoco

        self._mujoco = mujoco
        self.model, self.data = model, data
        self.width, self.height = int(width), int(height)
        try:
            self._cam_id = model.camera(camera).id
        except KeyError:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"camera {camera!r} not in the model; cameras: {names}") from None
        if fast:
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        backend = os.environ.get("MUJOCO_GL", "egl").lower().strip() or "egl"
        if backend in _DISABLED:
            raise HeadlessRenderError(f"rendering is disabled (MUJOCO_GL={backend}); build the env with render=False")
        try:
            self._gl = _make_gl_context(backend, self.width, self.height)
            self._gl.make_current()
            self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except HeadlessRenderError:
            raise
        except Exception as exc:  # missing libraries surface as ImportError/OSError/AttributeError/RuntimeError
            raise HeadlessRenderError(
                f"MuJoCo could not create an offscreen GL context with MUJOCO_GL={backend} "
                f"({type(exc).__name__}: {exc}).\n{headless_report()}\nInstall:\n{INSTALL_HINT}\n"
                "Set MUJOCO_GL before Python starts (egl or osmesa); run scripts/check_headless.sh to test both."
            ) from exc
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        if fast:
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                self._scene.flags[flag] = 0
        self._opt = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = self._cam_id
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._buf = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self.backend = backend
        _LIVE.add(self)
        _register_atexit_once()

    def camera_upside_down(self) -> bool:
        # Column 1 of cam_xmat is the camera's image-up axis in world coordinates.
        return bool(self.data.cam_xmat[self._cam_id].reshape(3, 3)[2, 1] < 0)

    def render(self) -> np.ndarray:
        mj = self._mujoco
        self._gl.make_current()
        mj.mjv_updateScene(self.model, self.data, self._opt, None, self._cam, mj.mjtCatBit.mjCAT_ALL, self._scene)
        mj.mjr_render(self._rect, self._scene, self._ctx)
        mj.mjr_readPixels(self._buf, None, self._rect, self._ctx)
        img = self._buf[::-1]  # OpenGL rows start at the bottom
        if self.camera_upside_down():
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def close(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            ctx.free()
        gl, self._gl = getattr(self, "_gl", None), None
        if gl is not None:
            gl.free()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_LIVE: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_renderers() -> None:
    for renderer in list(_LIVE):
        try:
            renderer.close()
        except Exception:
            pass


def _register_atexit_once() -> None:
    # Free GL contexts before interpreter teardown, or MuJoCo's GLContext.__del__ prints errors at exit. Registered
    # after the first context exists so that it runs *before* mujoco.egl's own atexit (LIFO), which terminates
    # the EGL display the contexts live on.
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_live_renderers)
        _ATEXIT_REGISTERED = True


def _try_backend(backend: str) -> str:
    """Render one MetaWorld frame with ``backend`` in a fresh interpreter; return "ok ..." or the error."""
    import subprocess

    code = (
        "import time; from gaflow.envs.metaworld import MetaWorldEnv\n"
        "env = MetaWorldEnv('reach', image_size=64); t = time.perf_counter(); o = env.reset(seed=0)\n"
        "img = o['observation.image']; assert img.shape == (64, 64, 3) and img.std() > 1, 'blank image'\n"
        "print(f'ok: 64x64 frame, mean {img.mean():.1f}, first reset+render {time.perf_counter() - t:.2f}s')\n"
    )
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "FAILED: timed out after 300 s"
    if out.returncode == 0:
        return out.stdout.strip().splitlines()[-1]
    lines = out.stderr.strip().splitlines() or ["(no output)"]
    reason = next((ln for ln in lines if "HeadlessRenderError:" in ln), lines[-1])
    return f"FAILED: {reason}"


def main() -> int:
    print(headless_report())
    ok = False
    for backend in ("egl", "osmesa"):
        result = _try_backend(backend)
        ok |= result.startswith("ok")
        print(f"render test MUJOCO_GL={backend}: {result}")
    if not ok:
        print(f"No backend can render. Install:\n{INSTALL_HINT}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
