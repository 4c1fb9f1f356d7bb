"""kernels.fastexp.exp_nonpos against float64 exp: within 1 ulp of the float32 result on (-87.3, 0],
0 below (and at -inf), NaN for NaN."""
import numpy as np
from numba import njit

from glmcpu.kernels.fastexp import exp_nonpos


@njit(cache=True, fastmath={"reassoc", "contract"})   # as the attention kernel uses it
def _exp_all(out, x):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


def test_exp_within_one_ulp():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-87.3, 0, 400001), -np.abs(rng.standard_normal(200000)) * 10,
                        [0.0, -0.0, -1e-30, -1e-7, -np.log(2) / 2, -np.log(2)]]).astype(np.float32)
    out = np.empty_like(x)
    _exp_all(out, x)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert (np.abs(out - ref) / ulp).max() <= 1.0
    assert out[x == 0].tolist() == [1.0] * int((x == 0).sum())


def test_exp_edges():
    x = np.array([-87.31, -88, -100, -1e30, -np.inf, np.nan], np.float32)
    out = np.full_like(x, 7.0)
    _exp_all(out, x)
    assert out[:5].tolist() == [0.0] * 5 and np.isnan(out[5])
