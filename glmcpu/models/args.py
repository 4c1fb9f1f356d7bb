"""Checking an architecture's hyper-parameters and tensors before anything is sized by them.

A model file's ``params`` come from a converter (ours, or a newer glmcpu) or from a damaged
file; every size the runtime allocates derives from them. So each value is checked for its type
and range here, and the file's tensors against the architecture's tensor table, before a single
buffer is allocated: a bad value ends in one GlmcpuError that names it, never a TypeError, an
absurd allocation or a kernel reading out of bounds.
"""
import dataclasses
import math
import os

from glmcpu.errors import GlmcpuError

LIMIT = 2**31  # every count and id fits an int32 (the kernels index with them)


def _bad(key, value, want):
    return GlmcpuError(f"model file: invalid params {key!r}: {value!r} (expected {want}); "
                       f"the file is damaged or was written by another tool: convert it again")


def _int(key, v, minimum):
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v < LIMIT:
        raise _bad(key, v, f"an integer in [{minimum}, 2**31)")
    return v


def _field_value(f, d):
    """The value of dataclass field ``f`` from ``d``, checked against its annotation. Counts are
    at least 1, token ids (names ending in ``_token_id(s)``) at least 0, floats positive and
    finite; a field with a default may be absent."""
    if f.name not in d:
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise GlmcpuError(f"model file: params lack {f.name!r}; the file is damaged or was written "
                              f"by another tool: convert it again")
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    v, kind = d[f.name], f.type if isinstance(f.type, str) else f.type.__name__
    is_id = f.name.endswith(("_token_id", "_token_ids"))
    if v is None and f.default is None:
        return None
    if kind == "int":
        return _int(f.name, v, 0 if is_id else 1)
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise _bad(f.name, v, "a positive finite number")
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise _bad(f.name, v, "true or false")
        return v
    if kind == "list":
        if not isinstance(v, list) or len(v) > 64:
            raise _bad(f.name, v, "a list of token ids")
        return [_int(f.name, e, 0) for e in v]
    if kind == "str":
        if not isinstance(v, str):
            raise _bad(f.name, v, "a string")
        return v
    raise TypeError(f"{f.name}: unchecked annotation {kind}")  # a programming error, not input


def from_params(cls, d):
    """An instance of the ModelArgs dataclass ``cls`` from a params dict: every field checked,
    then ``cls.check()`` for the rules that relate fields (e.g. heads per KV group)."""
    if not isinstance(d, dict):
        raise GlmcpuError("model file: params is not a JSON object; convert the model again")
    args = cls(**{f.name: _field_value(f, d) for f in dataclasses.fields(cls)})
    args.check()
    return args


def require(ok, key, value, want):
    """For ``check()``: raise the params error unless ``ok``."""
    if not ok:
        raise _bad(key, value, want)


def check_tensors(mf, table):
    """The file holds every tensor of the architecture's ``table`` (name -> shape) at that shape,
    and nothing else: checked before any buffer is sized by the params."""
    have = mf.tensor_types
    missing = [n for n in table if n not in have]
    if missing:
        raise GlmcpuError(f"{mf.path}: corrupted file: tensor {missing[0]!r} is missing"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for name, shape in table.items():
        if tuple(have[name]["shape"]) != tuple(shape):
            raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} has shape {list(have[name]['shape'])}, "
                              f"expected {list(shape)} from the params")
    extra = sorted(set(have) - set(table))
    if extra:
        raise GlmcpuError(f"{mf.path}: corrupted file: tensor {extra[0]!r} is not part of this architecture")


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_fits(n_bytes, n_ctx, n_slots=1):
    """An early clear error when a KV cache of ``n_bytes`` for ``n_slots`` sequences of ``n_ctx``
    tokens cannot fit in RAM (numpy would otherwise reserve it lazily and the process die later)."""
    ram = physical_memory()
    if ram is not None and n_bytes > ram:
        what = f"a {n_ctx}-token context" if n_slots == 1 else f"{n_slots} sequences of {n_ctx} tokens"
        fix = "a smaller context (n_ctx / --ctx)" + ("" if n_slots == 1 else " or fewer parallel sequences")
        raise GlmcpuError(f"{what} needs a {n_bytes / 1e9:.1f} GB KV cache, more than this "
                          f"machine's {ram / 1e9:.1f} GB of RAM; use {fix}")
