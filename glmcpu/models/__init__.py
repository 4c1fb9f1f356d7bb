"""Architectures: one module each, with ``ModelArgs`` (hyper-parameters), ``tensor_table(args)``
(our tensor names and shapes) and the class that runs it, built from (ModelFile, n_ctx, threads).
Families (glmcpu/families/) name the architecture that runs them."""
from collections import namedtuple

from glmcpu.errors import GlmcpuError

Arch = namedtuple("Arch", "name args tensor_table runner")


def get(name):
    """The architecture ``name`` (a file made by a newer glmcpu may name one this one lacks)."""
    from . import chatglm, chatglm1
    archs = {"chatglm": Arch("chatglm", chatglm.ModelArgs, chatglm.tensor_table, chatglm.ChatGLM),
             "chatglm1": Arch("chatglm1", chatglm1.ModelArgs, chatglm1.tensor_table, chatglm1.ChatGLM1)}
    if name not in archs:
        raise GlmcpuError(f"unsupported architecture {name!r} in the model file (upgrade glmcpu)")
    return archs[name]


def tensor_table(params):
    """Our tensor names -> shapes implied by a family's normalized ``params``."""
    arch = get(params.get("arch"))
    return arch.tensor_table(arch.args.from_dict(params))
