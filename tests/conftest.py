import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """converted(case, dtype) -> path of that golden case converted to a glmcpu file (cached)."""
    from glmcpu.convert import convert
    cache = {}
    root = tmp_path_factory.mktemp("converted")

    def get(case, dtype="f32"):
        key = (case, dtype)
        if key not in cache:
            out = str(root / f"{case}-{dtype}.glmq")
            convert(helpers.golden(case), out, dtype=dtype, progress=False)
            cache[key] = out
        return cache[key]

    return get
