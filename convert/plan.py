"""Which checkpoint tensors become which of ours: the family's name map (glmcpu/families/)
against the architecture's tensor table (glmcpu/models/), checked once before anything is written."""
import numpy as np

from glmcpu import models
from glmcpu.errors import GlmcpuError, UnsupportedError
from glmcpu.families import is_tied, sources
from glmcpu.families.common import compile_patterns
from .hf import to_f32


class Concat:
    """Checkpoint tensors stacked along rows (q, k, v -> one QKV), read a block of rows at a time."""

    def __init__(self, parts):
        self.parts = parts
        first = parts[0]
        self.name = "+".join(p.name for p in parts)
        self.path = first.path
        self.st_dtype = first.st_dtype
        self.shape = (sum(p.shape[0] for p in parts),) + tuple(first.shape[1:])
        for p in parts[1:]:
            if tuple(p.shape[1:]) != tuple(first.shape[1:]) or p.st_dtype != first.st_dtype:
                raise GlmcpuError(f"{p.path}: tensor {p.name!r} ({p.st_dtype} {list(p.shape)}) cannot be stacked "
                                  f"with {first.name!r} ({first.st_dtype} {list(first.shape)})")

    def raw(self, r0=None, r1=None):
        r0 = 0 if r0 is None else r0
        r1 = self.shape[0] if r1 is None else r1
        out, base = [], 0
        for p in self.parts:
            n = p.shape[0]
            lo, hi = max(r0, base), min(r1, base + n)
            if lo < hi:
                out.append(p.raw(lo - base, hi - base))
            base += n
        return np.concatenate(out, axis=0)

    def rows_f32(self, r0=None, r1=None):
        return to_f32(self.raw(r0, r1), self.st_dtype)


def plan_tensors(checkpoint, config, family, params):
    """[(our name, source tensor, row permutation or None)] in file order; every checkpoint tensor
    is used or explicitly ignored, and every shape must agree with config.json."""
    shapes = models.tensor_table(params)
    tensors = checkpoint.tensors
    ignored = compile_patterns(family.IGNORED)
    used, plan = set(), []
    tied = is_tied(family, config)
    for ours, shape in shapes.items():
        src = sources(family, ours)
        if src is None:
            raise GlmcpuError(f"glmcpu bug: family {family.NAME} has no source for {ours!r}")
        names = src if isinstance(src, list) else [src]
        if ours == "output.weight" and tied and names[0] not in tensors:
            names = [sources(family, "token_embd.weight")]  # tied: the output layer is the embedding
        missing = [n for n in names if n not in tensors]
        if missing:
            raise GlmcpuError(f"{checkpoint.src}: checkpoint has no tensor {missing[0]!r} (for {ours!r}); "
                              f"incomplete download, or config.json does not match the weights")
        for n in names:
            t = tensors[n]
            if t.st_dtype not in ("F32", "F16", "BF16"):
                raise GlmcpuError(f"{t.path}: tensor {n!r} has dtype {t.st_dtype}; expected float32/float16/bfloat16")
        used.update(names)
        t = tensors[names[0]] if len(names) == 1 else Concat([tensors[n] for n in names])
        if tuple(t.shape) != tuple(shape):
            raise GlmcpuError(f"{t.path}: tensor {t.name!r} has shape {list(t.shape)}, but config.json implies "
                              f"{list(shape)} (config and weights disagree)")
        perm = getattr(family, "row_permutation", lambda *a: None)(ours, params, config)
        plan.append((ours, t, perm))
    for name, t in tensors.items():
        if name in used or any(p.match(name) for p in ignored):
            continue
        for key, why in family.UNSUPPORTED_TENSORS.items():
            if key in name:
                raise UnsupportedError(f"unsupported: {name} ({why})")
        raise GlmcpuError(f"{t.path}: unexpected tensor {name!r} for a {family.NAME} checkpoint "
                          f"(an extra bias or layer that config.json does not describe, or an unsupported variant)")
    return plan
