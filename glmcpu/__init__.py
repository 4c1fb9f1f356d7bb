"""glmcpu: quantized CPU inference for the ChatGLM family in numpy + numba."""
import os as _os

__version__ = "0.1.0"

# In a source checkout, kernels/ and convert/ sit beside glmcpu/ and are installed as
# glmcpu.kernels / glmcpu.convert (package-dir mapping in pyproject.toml). When this package
# is imported straight from the checkout (e.g. `python -m glmcpu` in the repo root), let the
# submodule search find them there too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)  # noqa: F821  (package __path__)

# numba's on-disk cache of compiled kernels goes to a user cache directory, not into the
# installed package: files numba writes into site-packages are not pip's, so they outlive
# `pip uninstall`, and the leftover site-packages/glmcpu/ folder then shadows a later editable
# install as an empty namespace package. A NUMBA_CACHE_DIR set by the user still wins.
if "NUMBA_CACHE_DIR" not in _os.environ:
    _cache = _os.path.join(_os.environ.get("XDG_CACHE_HOME") or _os.path.expanduser("~/.cache"), "glmcpu", "numba")
    try:
        _os.makedirs(_cache, exist_ok=True)
    except OSError:
        pass  # no writable home: numba picks its own place (next to the sources, or its user dir)
    else:
        _os.environ["NUMBA_CACHE_DIR"] = _cache
        import sys as _sys
        if "numba" in _sys.modules:  # imported before us: make it read the variable now
            _sys.modules["numba"].core.config.reload_config()

from .errors import GlmcpuError, UnsupportedError  # noqa: E402
from .model import Model, load  # noqa: E402

DEMO_MODEL = "demo-chatglm3-poems-q4_0.glmq"


def demo_model_path():
    """The built-in demo model shipped in the package (docs/DEMO_MODEL.md)."""
    path = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "data", DEMO_MODEL)
    if not _os.path.isfile(path):
        raise GlmcpuError(f"the built-in demo model is missing ({path}); reinstall glmcpu or pass -m FILE")
    return path


__all__ = ["load", "Model", "GlmcpuError", "UnsupportedError", "demo_model_path", "__version__"]
