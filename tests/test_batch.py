"""Several sequences in one forward step (Model.forward_batch over KV-cache slots): every row's
logits equal those of the sequence run alone, bit for bit with the quantized kernels (each row's
arithmetic does not depend on the other rows), within float32 rounding with f32 weights."""
import os

import numpy as np
import pytest

import glmcpu
from glmcpu.errors import GlmcpuError
from helpers import golden, max_rel


def _prompts(case):
    e = np.load(os.path.join(golden(case), "expected.npz"))
    ids = [int(t) for t in e["prompt_ids"]]
    return [ids, ids[:5] + ids[9:], ids[3:]]  # three different sequences sharing pieces


def _alone(path, ids, steps, kv):
    """Logits after the prompt and after each of ``steps`` forced next tokens, one sequence."""
    m = glmcpu.load(path, n_ctx=64, kv=kv)
    out = [m.forward(ids, all_logits=False)[0]]
    for t in steps:
        out.append(m.forward([t], all_logits=False)[0])
    return np.stack(out)


@pytest.mark.parametrize("case,dtype,kv", [("glm4-tiny", "q4_0", "f16"), ("chatglm3-tiny", "q8_0", "f32"),
                                           ("glm4-0414-tiny-bf16-sharded", "q4_k", "f16"),
                                           ("chatglm2-tiny-bin", "f32", "f32")])
def test_batched_rows_equal_each_sequence_alone(converted, case, dtype, kv):
    path = converted(case, dtype)
    prompts, steps = _prompts(case), [[7, 8, 9], [11, 12, 13], [17, 18, 19]]
    want = [_alone(path, p, s, kv) for p, s in zip(prompts, steps)]
    p, (s0, s1, s2) = prompts, steps
    schedule = [[(0, p[0])],                                  # slot 0's prompt alone
                [(0, [s0[0]]), (1, p[1])],                    # slot 1's prompt arrives while 0 decodes
                [(2, p[2]), (1, [s1[0]]), (0, [s0[1]])],      # any order of entries
                [(1, [s1[1]]), (0, [s0[2]]), (2, [s2[0]])],   # three decode rows
                [(2, [s2[1]]), (1, [s1[2]])],                 # slot 0 finished
                [(2, [s2[2]])]]
    m = glmcpu.load(path, n_ctx=64, kv=kv, n_slots=3)
    got = [[], [], []]
    for entries in schedule:
        for (slot, _), row in zip(entries, m.forward_batch(entries)):
            got[slot].append(row)
    for s in range(3):
        g = np.stack(got[s])
        assert g.shape == want[s].shape
        if dtype == "f32":   # f32 matmul and matvec sum in different orders
            assert max_rel(g, want[s]) <= 1e-5
        else:
            assert np.array_equal(g.view(np.uint32), want[s].view(np.uint32)), f"slot {s}"
        assert m.slot_tokens[s] == prompts[s] + steps[s]


def test_chunked_batch_spans_chunks(converted):
    """Rows of one step spread over several of the architecture's chunks."""
    path = converted("glm4-tiny", "q4_0")
    prompts = _prompts("glm4-tiny")
    want = [_alone(path, p, [], "f16")[0] for p in prompts]
    m = glmcpu.load(path, n_ctx=64, n_slots=3)
    m.arch.chunk = 7
    got = m.forward_batch([(s, p) for s, p in enumerate(prompts)])
    assert np.array_equal(got, np.stack(want))


def test_batch_errors(converted):
    m = glmcpu.load(converted("glm4-tiny", "q4_0"), n_ctx=16, n_slots=2)
    with pytest.raises(GlmcpuError, match="slot 1 appears twice"):
        m.forward_batch([(1, [5]), (1, [6])])
    with pytest.raises(GlmcpuError, match=r"slot must be an integer in 0\.\.1, got 2"):
        m.forward_batch([(2, [5])])
    with pytest.raises(GlmcpuError, match="each entry must be"):
        m.forward_batch([[5, 6, 7]])
    with pytest.raises(GlmcpuError, match="non-empty list"):
        m.forward_batch([])
    m.forward_batch([(1, list(range(10)))])
    with pytest.raises(GlmcpuError, match="10 cached \\+ 7 new tokens > n_ctx 16 in slot 1"):
        m.forward_batch([(0, [1]), (1, list(range(7)))])
    assert m.slot_tokens == [[], list(range(10))]   # a refused step changes nothing
    m.reset(1)
    assert m.slot_tokens == [[], []]
    with pytest.raises(GlmcpuError, match="n_slots .* must be an integer in 1..256"):
        glmcpu.load(converted("glm4-tiny", "q4_0"), n_slots=0)
    with pytest.raises(GlmcpuError, match="ChatGLM-6B runs one sequence at a time"):
        glmcpu.load(converted("chatglm1-tiny", "f32"), n_slots=2)
