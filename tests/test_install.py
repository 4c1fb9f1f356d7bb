"""Where glmcpu leaves files outside the model paths it is given."""
import os
import subprocess
import sys

CODE = ("import numpy as np, glmcpu\n"
        "from numba.core import config\n"
        "from glmcpu import kernels as K\n"
        "x = np.ones((2, 8), np.float32)\n"
        "K.rmsnorm(np.zeros_like(x), x, np.ones(8, np.float32), np.float32(1e-5))\n"
        "print(config.CACHE_DIR)\n")


def _run(tmp_path, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), **env_extra)
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def _cached(root):
    return [f for _, _, files in os.walk(root) for f in files if f.endswith(".nbi")]


def test_numba_cache_goes_to_the_user_cache_dir_not_the_package(tmp_path):
    """Files numba writes next to installed sources are not pip's: they survive an uninstall
    and the leftover package folder shadows a later editable install. So the kernels' cache
    lives in ~/.cache/glmcpu/numba (or $XDG_CACHE_HOME/glmcpu/numba)."""
    want = str(tmp_path / "home" / ".cache" / "glmcpu" / "numba")
    assert _run(tmp_path) == want
    assert any(f.startswith("norm.rmsnorm") for f in _cached(want))
    xdg = str(tmp_path / "xdg")
    assert _run(tmp_path, XDG_CACHE_HOME=xdg) == os.path.join(xdg, "glmcpu", "numba")


def test_numba_cache_dir_set_by_the_user_wins(tmp_path):
    mine = str(tmp_path / "mine")
    assert _run(tmp_path, NUMBA_CACHE_DIR=mine) == mine
    assert _cached(mine) and not os.path.exists(tmp_path / "home" / ".cache" / "glmcpu")
