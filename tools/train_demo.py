#!/usr/bin/env python3
"""Train a small demo model with the exact ChatGLM3-6B architecture on offline text.

This is a development tool, NOT part of the glmcpu package: it is the only file in the repo
that uses torch, and it runs in its own virtualenv:

    python3 -m venv /work/venv-train
    /work/venv-train/bin/pip install torch==2.13.0 numpy sentencepiece safetensors
    apt-get install -y fortunes-zh fortunes-min fortunes      # the training text
    /work/venv-train/bin/python tools/train_demo.py --out /work/demo_ckpt --minutes 20 --seed 0

Data: Debian fortune files (plain text, entries separated by a line holding only "%"):
Chinese from fortunes-zh (chinese, tang300, song100; the main content) and a minority of
English from fortunes-min (fortunes, literature, riddles) and fortunes (wisdom, tao,
platitudes, education, science). ANSI colour escapes are stripped. Each entry is one
sequence ``[gMASK, sop] + sp.encode(text) + [eos]`` truncated to --seq-len tokens; a seeded
shuffle puts ~5% of the entries in a held-out set.

Model: the ChatGLM3-6B forward (tests/helpers.py ``reference_logits`` is its numpy spec):
RMSNorm, grouped-query attention with a QKV bias, interleaved-pair rotary embedding on the
first half of each head (base 10000), SwiGLU MLP (first half of dense_h_to_4h is the gate),
no other biases, final RMSNorm, untied output layer, vocab padded to 65024.

Exact full-vocabulary training at a fraction of the cost: only the token ids that occur in
the training set ("active" ids, plus the special tokens) get their own output row; all other
(inactive) rows of output_layer share ONE trained vector ``u``. The softmax over 65024 rows
is then exactly ``logsumexp(active logits, h.u + log(n_inactive))``, so the loss that is
optimised is the true cross-entropy of the exported full-vocabulary model (whose inactive
output rows are all set to ``u``). Inactive embedding rows keep their (seeded) random
initial values (they never occur in training). The held-out perplexity is measured again on
the exported full-vocabulary tensors at the end.

Outputs (in --out): config.json, model.safetensors (float32, HF ChatGLM tensor names),
tokenizer.model, tokenizer_config.json, train.txt, heldout.txt, train_log.json.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

TOK_DIR = "/work/shared/tokenizers/chatglm2-chatglm3"
FORTUNE_DIR = "/usr/share/games/fortunes"
ZH_FILES = ["chinese", "tang300", "song100"]                                # fortunes-zh
EN_FILES = ["fortunes", "literature", "riddles",                            # fortunes-min
            "wisdom", "tao", "platitudes", "education", "science"]          # fortunes
GMASK, SOP, EOS = 64790, 64792, 2
VOCAB = 65024
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ------------------------------------------------------------------------------------ data

def read_fortunes(path):
    text = ANSI.sub("", open(path, encoding="utf-8", errors="replace").read())
    text = text.replace("\r\n", "\n")
    return [e.strip("\n") for e in re.split(r"^%[ \t]*$", text, flags=re.M) if e.strip()]


def load_entries(fortune_dir):
    entries, sources = [], {}
    for name in ZH_FILES + EN_FILES:
        path = os.path.join(fortune_dir, name)
        if not os.path.isfile(path):
            print(f"  (skipping missing {path})", flush=True)
            continue
        es = read_fortunes(path)
        sources[name] = len(es)
        entries += es
    return entries, sources


def write_entries(path, entries):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n%\n".join(entries) + "\n")


def encode(sp, text, seq_len):
    return ([GMASK, SOP] + sp.encode(text) + [EOS])[:seq_len]


def make_batches(seqs, tokens_per_batch, rng):
    """Length-bucketed batches (deterministic given rng): shuffle, sort within chunks of ~50
    batches by length, cut into batches of at most tokens_per_batch padded tokens, shuffle."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batches, chunk = [], 2000
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(seqs[i]))
        cur = []
        for i in part:
            L = len(seqs[i])
            if cur and (len(cur) + 1) * max(L, max(len(seqs[j]) for j in cur)) > tokens_per_batch:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(seqs, idx):
    T = max(len(seqs[i]) for i in idx)
    ids = torch.zeros(len(idx), T, dtype=torch.long)
    mask = torch.zeros(len(idx), T, dtype=torch.bool)
    for r, i in enumerate(idx):
        s = seqs[i]
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = True
    # logits at position t predict token t+1; predict every token after the 2 prefix tokens
    tgt_mask = mask[:, 2:].clone()
    return ids, ids[:, 2:], tgt_mask


# ------------------------------------------------------------------------------------ model

class Cfg:
    def __init__(self, a):
        self.L, self.E, self.H, self.D = a.layers, a.hidden, a.heads, a.kv_channels
        self.G, self.F, self.eps, self.seq_len = a.groups, a.ffn, 1e-5, a.seq_len


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Rope:
    """ChatGLM2/3 rotary: interleaved pairs (x[2i], x[2i+1]) on the first D/2 dims."""

    def __init__(self, D, max_len):
        n_elem = D // 2
        theta = 1.0 / (10000.0 ** (torch.arange(0, n_elem, 2, dtype=torch.float64) / n_elem))
        ang = torch.outer(torch.arange(max_len, dtype=torch.float64), theta)
        self.cos, self.sin, self.n = ang.cos().float(), ang.sin().float(), n_elem

    def __call__(self, x):                                       # x [B, heads, T, D]
        T = x.shape[2]
        rot, keep = x[..., :self.n], x[..., self.n:]
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        c, s = self.cos[:T], self.sin[:T]
        out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
        return torch.cat([out, keep], dim=-1)


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        qkv_out = (c.H + 2 * c.G) * c.D
        self.ln1 = torch.nn.Parameter(torch.ones(c.E))
        self.qkv_w = torch.nn.Parameter(torch.randn(qkv_out, c.E) * 0.02)
        self.qkv_b = torch.nn.Parameter(torch.zeros(qkv_out))
        self.dense = torch.nn.Parameter(torch.randn(c.E, c.H * c.D) * 0.02 / math.sqrt(2 * c.L))
        self.ln2 = torch.nn.Parameter(torch.ones(c.E))
        self.h_to_4h = torch.nn.Parameter(torch.randn(2 * c.F, c.E) * 0.02)
        self.four_h_to_h = torch.nn.Parameter(torch.randn(c.E, c.F) * 0.02 / math.sqrt(2 * c.L))

    def forward(self, x, rope):                                  # x [B, T, E]
        c = self.c
        B, T, _ = x.shape
        qkv = F.linear(rms(x, self.ln1, c.eps), self.qkv_w, self.qkv_b)
        q, k, v = qkv.split([c.H * c.D, c.G * c.D, c.G * c.D], dim=-1)
        q = rope(q.view(B, T, c.H, c.D).transpose(1, 2))
        k = rope(k.view(B, T, c.G, c.D).transpose(1, 2))
        v = v.view(B, T, c.G, c.D).transpose(1, 2)
        k = k.repeat_interleave(c.H // c.G, dim=1)               # head h uses group h // (H/G)
        v = v.repeat_interleave(c.H // c.G, dim=1)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # scale 1/sqrt(D)
        x = x + F.linear(ctx.transpose(1, 2).reshape(B, T, c.H * c.D), self.dense)
        a, b = F.linear(rms(x, self.ln2, c.eps), self.h_to_4h).chunk(2, dim=-1)
        return x + F.linear(F.silu(a) * b, self.four_h_to_h)


class DemoGLM(torch.nn.Module):
    """Transformer with a compact (active-id) embedding/output; see the module docstring."""

    def __init__(self, c, active_ids):
        super().__init__()
        self.c = c
        self.rope = Rope(c.D, c.seq_len + 64)
        self.layers = torch.nn.ModuleList([Layer(c) for _ in range(c.L)])
        self.final_ln = torch.nn.Parameter(torch.ones(c.E))
        full_emb = torch.randn(VOCAB, c.E) * 0.02
        self.register_buffer("full_emb", full_emb)               # inactive rows (never trained)
        self.register_buffer("active", torch.tensor(active_ids, dtype=torch.long))
        idmap = torch.full((VOCAB,), len(active_ids), dtype=torch.long)
        idmap[self.active] = torch.arange(len(active_ids))
        self.register_buffer("idmap", idmap)                     # inactive -> len(active)
        self.emb = torch.nn.Parameter(full_emb[self.active].clone())
        self.out = torch.nn.Parameter(torch.randn(len(active_ids), c.E) * 0.02)
        self.u = torch.nn.Parameter(torch.randn(c.E) * 0.02)     # shared inactive output row
        self.log_rest = math.log(VOCAB - len(active_ids))

    def hidden(self, ids):
        m = self.idmap[ids]
        is_act = m < len(self.active)
        x = torch.where(is_act[..., None], self.emb[m.clamp(max=len(self.active) - 1)],
                        self.full_emb[ids])
        for layer in self.layers:
            x = layer(x, self.rope)
        return rms(x, self.final_ln, self.c.eps)

    def nll(self, ids, tgt, tgt_mask):
        """Per-target negative log-likelihood under the full 65024-way softmax: [n targets]."""
        h = self.hidden(ids)[:, 1:-1][tgt_mask]                  # positions predicting tgt
        t = self.idmap[tgt[tgt_mask]]
        la = F.linear(h, self.out)                               # [n, n_active]
        lu = h @ self.u                                          # logit of every inactive row
        lse = torch.logsumexp(torch.cat([la, (lu + self.log_rest)[:, None]], 1), dim=1)
        tl = torch.cat([la, lu[:, None]], 1).gather(1, t[:, None])[:, 0]
        return lse - tl

    @torch.no_grad()
    def export(self):
        """Full HF-layout ChatGLM tensors (float32 numpy)."""
        c, p = self.c, "transformer."
        emb = self.full_emb.clone()
        emb[self.active] = self.emb
        out = self.u[None, :].expand(VOCAB, c.E).clone()
        out[self.active] = self.out
        t = {p + "embedding.word_embeddings.weight": emb}
        for i, l in enumerate(self.layers):
            L = f"{p}encoder.layers.{i}."
            t[L + "input_layernorm.weight"] = l.ln1
            t[L + "self_attention.query_key_value.weight"] = l.qkv_w
            t[L + "self_attention.query_key_value.bias"] = l.qkv_b
            t[L + "self_attention.dense.weight"] = l.dense
            t[L + "post_attention_layernorm.weight"] = l.ln2
            t[L + "mlp.dense_h_to_4h.weight"] = l.h_to_4h
            t[L + "mlp.dense_4h_to_h.weight"] = l.four_h_to_h
        t[p + "encoder.final_layernorm.weight"] = self.final_ln
        t[p + "output_layer.weight"] = out
        return {k: v.detach().float().contiguous().numpy().copy() for k, v in t.items()}


class FullGLM(torch.nn.Module):
    """Plain full-vocabulary ChatGLM3 forward over exported HF tensors (for checks/sampling)."""

    def __init__(self, c, tensors):
        super().__init__()
        self.c, p = c, "transformer."
        self.rope = Rope(c.D, 4096)
        T = {k: torch.from_numpy(v) for k, v in tensors.items()}
        self.emb, self.out = T[p + "embedding.word_embeddings.weight"], T[p + "output_layer.weight"]
        self.final_ln = T[p + "encoder.final_layernorm.weight"]
        self.layers = []
        for i in range(c.L):
            L = f"{p}encoder.layers.{i}."
            l = Layer(c)
            l.ln1.data, l.qkv_w.data = T[L + "input_layernorm.weight"], T[L + "self_attention.query_key_value.weight"]
            l.qkv_b.data, l.dense.data = T[L + "self_attention.query_key_value.bias"], T[L + "self_attention.dense.weight"]
            l.ln2.data, l.h_to_4h.data = T[L + "post_attention_layernorm.weight"], T[L + "mlp.dense_h_to_4h.weight"]
            l.four_h_to_h.data = T[L + "mlp.dense_4h_to_h.weight"]
            self.layers.append(l)

    @torch.no_grad()
    def logits(self, ids):                                       # ids [B, T] -> [B, T, 65024]
        x = self.emb[ids]
        for layer in self.layers:
            x = layer(x, self.rope)
        return F.linear(rms(x, self.final_ln, self.c.eps), self.out)


# ------------------------------------------------------------------------------------ helpers

@torch.no_grad()
def heldout_ppl(model, seqs, tokens_per_batch=8192):
    model.eval()
    tot, n = 0.0, 0
    batches = make_batches(seqs, tokens_per_batch, random.Random(0))
    for idx in batches:
        ids, tgt, tm = collate(seqs, idx)
        if isinstance(model, FullGLM):
            lg = model.logits(ids)[:, 1:-1][tm]
            nll = F.cross_entropy(lg, tgt[tm], reduction="none")
        else:
            nll = model.nll(ids, tgt, tm)
        tot += float(nll.double().sum())
        n += int(tm.sum())
    model.train()
    return math.exp(tot / n), n


def config_json(c, n_ctx):
    return {
        "_name_or_path": "glmcpu/chatglm3-demo-base",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": c.F,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": c.E,
        "kv_channels": c.D,
        "layernorm_epsilon": c.eps,
        "multi_query_attention": True,
        "multi_query_group_num": c.G,
        "num_attention_heads": c.H,
        "num_layers": c.L,
        "original_rope": True,
        "padded_vocab_size": VOCAB,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": n_ctx,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "tie_word_embeddings": False,
        "eos_token_id": EOS,
        "pad_token_id": 0,
    }


@torch.no_grad()
def greedy(full, prefix, n):
    ids = list(prefix)
    for _ in range(n):
        nxt = int(full.logits(torch.tensor([ids]))[0, -1].argmax())
        ids.append(nxt)
        if nxt == EOS:
            break
    return ids[len(prefix):]


# ------------------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=0,
                    help="exact number of optimizer steps (overrides --minutes; use the logged "
                         "step count to reproduce a run deterministically)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-channels", type=int, default=32)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--heldout-frac", type=float, default=0.05)
    ap.add_argument("--fortune-dir", default=FORTUNE_DIR)
    ap.add_argument("--tokenizer-dir", default=TOK_DIR)
    a = ap.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data
    entries, sources = load_entries(a.fortune_dir)
    order = list(range(len(entries)))
    random.Random(a.seed).shuffle(order)
    n_ho = int(round(a.heldout_frac * len(entries)))
    ho_entries = [entries[i] for i in order[:n_ho]]
    tr_entries = [entries[i] for i in order[n_ho:]]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.tokenizer_dir, "tokenizer.model"))
    tr = [encode(sp, e, a.seq_len) for e in tr_entries]
    ho = [encode(sp, e, a.seq_len) for e in ho_entries]
    n_tr_tok = sum(len(s) - 2 for s in tr)
    print(f"entries: {sources} -> train {len(tr)} ({n_tr_tok} target tokens), "
          f"held-out {len(ho)} ({sum(len(s) - 2 for s in ho)} target tokens)", flush=True)
    active = sorted(set(x for s in tr for x in s) | {0, 1, 2, GMASK, SOP})
    print(f"active (trained) output rows: {len(active)} of {VOCAB}", flush=True)

    # ---- model
    c = Cfg(a)
    assert c.H % c.G == 0 and c.D % 4 == 0
    model = DemoGLM(c, active)
    n_params_full = sum(v.size for v in model.export().values())
    print(f"parameters (exported, full vocab): {n_params_full:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    ppl0, n_ho_tok = heldout_ppl(model, ho)
    print(f"held-out perplexity of the random-init model: {ppl0:.1f} over {n_ho_tok} tokens", flush=True)

    # ---- training loop (data order depends only on the seed)
    data_rng = random.Random(a.seed + 1)
    batches, epoch, bi = make_batches(tr, a.batch_tokens, data_rng), 0, 0
    total = a.steps if a.steps > 0 else None
    budget = a.minutes * 60.0
    t0 = time.time()
    step, ema, log = 0, None, []
    while True:
        if total is not None and step >= total:
            break
        if bi == len(batches):
            batches, epoch, bi = make_batches(tr, a.batch_tokens, data_rng), epoch + 1, 0
        if total is None and step == 20:
            # fix the schedule length from the measured speed of the first 20 steps
            per = (time.time() - t0) / 20
            total = max(step + 1, int(budget / per * 0.97))
            print(f"  {per:.2f} s/step -> training for {total} steps", flush=True)
        horizon = total if total is not None else 10 ** 9
        if step < a.warmup:
            lr = a.lr * (step + 1) / a.warmup
        else:
            frac = min(1.0, (step - a.warmup) / max(1, horizon - a.warmup))
            lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, tgt, tm = collate(tr, batches[bi])
        bi += 1
        loss = model.nll(ids, tgt, tm).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % 25 == 0 or step == 1:
            el = time.time() - t0
            print(f"step {step}/{total or '?'} epoch {epoch} lr {lr:.2e} loss {lv:.3f} "
                  f"(ema {ema:.3f}) {el:.0f}s", flush=True)
            log.append({"step": step, "loss": round(lv, 4), "ema": round(ema, 4), "s": round(el, 1)})
        if step % 500 == 0:
            p, _ = heldout_ppl(model, ho)
            print(f"  held-out perplexity {p:.2f}", flush=True)
            log[-1]["heldout_ppl"] = round(p, 3)
    train_s = time.time() - t0

    # ---- export
    os.makedirs(a.out, exist_ok=True)
    tensors = model.export()
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config_json(c, a.seq_len), f, indent=2)
    shutil.copyfile(os.path.join(a.tokenizer_dir, "tokenizer.model"), os.path.join(a.out, "tokenizer.model"))
    shutil.copyfile(os.path.join(a.tokenizer_dir, "tokenizer_config.chatglm3.json"),
                    os.path.join(a.out, "tokenizer_config.json"))
    write_entries(os.path.join(a.out, "train.txt"), tr_entries)
    write_entries(os.path.join(a.out, "heldout.txt"), ho_entries)

    # ---- final evaluation on the exported full-vocabulary tensors
    full = FullGLM(c, tensors)
    ppl_c, _ = heldout_ppl(model, ho)
    ppl, _ = heldout_ppl(full, ho)
    print(f"held-out perplexity: {ppl:.3f} (full-vocab export; compact {ppl_c:.3f}); "
          f"random init {ppl0:.1f}", flush=True)
    prompt = "床前明月光"
    gen = greedy(full, [GMASK, SOP] + sp.encode(prompt), 40)
    sample = prompt + sp.decode([t for t in gen if t < sp.get_piece_size()])
    print("greedy sample:", sample, flush=True)

    info = {
        "seed": a.seed,
        "command": "python tools/train_demo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch_version": torch.__version__,
        "threads": a.threads,
        "data": {"fortune_dir": a.fortune_dir, "entries_per_file": sources,
                 "train_entries": len(tr), "heldout_entries": len(ho),
                 "train_target_tokens": n_tr_tok, "heldout_target_tokens": n_ho_tok},
        "hyperparameters": {k: getattr(a, k) for k in
                            ["layers", "hidden", "heads", "kv_channels", "groups", "ffn", "seq_len",
                             "batch_tokens", "lr", "min_lr_frac", "warmup", "weight_decay",
                             "heldout_frac", "minutes"]},
        "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8), linear warmup + cosine decay, grad clip 1.0",
        "parameters": n_params_full,
        "active_output_rows": len(active),
        "steps": step,
        "epochs": round(epoch + bi / len(batches), 3),
        "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.time() - t_start, 1),
        "final_train_loss": round(lv, 4),
        "final_train_loss_ema": round(ema, 4),
        "heldout_perplexity": round(ppl, 4),
        "heldout_perplexity_random_init": round(ppl0, 2),
        "greedy_sample_床前明月光": sample,
        "log": log,
    }
    with open(os.path.join(a.out, "train_log.json"), "w") as f:
        json.dump(info, f, ensure_ascii=False, indent=2)
    print(f"wrote {a.out} in {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
