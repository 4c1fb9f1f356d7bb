from numba import njit


@njit(cache=True)
def rope_inplace(x, cos, sin, pos, n_rot_heads):
    """Rotary embedding on the first 2*cos.shape[1] dims of each head, interleaved pairs.

    x [T, n_head, head_dim]: heads 0 .. n_rot_heads-1 rotated in place; cos, sin [n_ctx, n_rot_pairs]; token t sits at
    position pos[t] (pos [T] int64: the rows of a step may belong to different sequences). Pair i
    is (x[2i], x[2i+1]) rotated by angle pos * theta_i (GPT-J style, as ChatGLM2/3 and GLM-4 apply it).
    """
    n_tok = x.shape[0]
    n_pairs = cos.shape[1]
    for t in range(n_tok):
        p = pos[t]
        for h in range(n_rot_heads):
            for i in range(n_pairs):
                c = cos[p, i]
                s = sin[p, i]
                x0 = x[t, h, 2 * i]
                x1 = x[t, h, 2 * i + 1]
                x[t, h, 2 * i] = x0 * c - x1 * s
                x[t, h, 2 * i + 1] = x1 * c + x0 * s


@njit(cache=True)
def rope_2d_inplace(x, cos, sin, pos, bpos, n_rot_heads):
    """ChatGLM-6B's 2-D rotary: in each head the first half is rotated by pos[t], the second half
    by bpos[t], each half "rotate-half" style (dim j paired with j + quarter, frequency j).

    x [T, n_head, D]; cos, sin [n_positions, D // 4]; pos, bpos [T] int64."""
    n_tok = x.shape[0]
    half = x.shape[2] // 2
    quarter = half // 2
    for t in range(n_tok):
        for part in range(2):
            p = pos[t] if part == 0 else bpos[t]
            base = part * half
            for h in range(n_rot_heads):
                for j in range(quarter):
                    c = cos[p, j]
                    s = sin[p, j]
                    x0 = x[t, h, base + j]
                    x1 = x[t, h, base + quarter + j]
                    x[t, h, base + j] = x0 * c - x1 * s
                    x[t, h, base + quarter + j] = x1 * c + x0 * s
