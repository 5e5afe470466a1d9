"""The one place that picks MuJoCo's GL backend; it must run before `import mujoco`."""

import os


def select_headless_gl() -> None:
    # MuJoCo picks its backend at import. Without a display only EGL renders offscreen; with one,
    # MuJoCo's own default (GLFW) is left alone. A user's MUJOCO_GL always wins.
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
