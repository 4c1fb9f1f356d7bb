"""Command line: glmcpu convert | info | verify  (also `python -m glmcpu ...`)."""
import argparse
import json
import os
import sys
import time

from .errors import GlmcpuError
from . import qtypes


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def cmd_convert(args):
    from glmcpu.convert import convert
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr)
    rows = convert(args.src, args.output, dtype=args.dtype, family=args.family,
                   tokenizer=args.tokenizer, progress=None if not args.quiet else False, log=log,
                   group_size=args.group_size, embedding_dtype=args.embedding_dtype,
                   output_dtype=args.output_dtype, tokenizer_dir=args.tokenizer_dir)
    dt = time.perf_counter() - t0
    if not args.quiet:
        table = [(n, "x".join(map(str, s)), q, f"{b:,}") for n, s, q, b in rows]
        print(_table(table, ("name", "shape", "dtype", "bytes")))
    total = os.path.getsize(args.output)
    print(f"wrote {args.output}: {len(rows)} tensors, {_fmt_bytes(total)} in {dt:.1f}s")


def cmd_export(args):
    from glmcpu.convert.gguf_export import export
    t0 = time.perf_counter()
    rows = export(args.file, args.output, progress=None if not args.quiet else False)
    if not args.quiet:
        print(_table([(n, "x".join(map(str, s)), q, f"{b:,}") for n, s, q, b in rows], ("name", "shape", "type", "bytes")))
    print(f"wrote {args.output}: {len(rows)} tensors, {_fmt_bytes(os.path.getsize(args.output))} "
          f"in {time.perf_counter() - t0:.1f}s")


def cmd_info(args):
    from glmcpu.file import ModelFile
    mf = ModelFile(args.file)
    if args.json:
        meta = {k: v for k, v in mf.meta.items()}
        for k in ("config", "params", "quantization", "tensors", "tokenizer"):
            meta[k] = json.loads(meta[k]) if k in meta else None
        if meta.get("tokenizer"):
            meta["tokenizer"]["data"] = f"<{len(mf.tokenizer_bytes())} bytes>"
        print(json.dumps(meta, indent=2, ensure_ascii=False))
        return
    from glmcpu import models
    a = models.get(mf.params.get("arch")).args.from_dict(mf.params)
    print(f"file:           {mf.path} ({_fmt_bytes(mf.size)})")
    print(f"format:         glmcpu v{mf.format_version}, written by {mf.meta.get('converter', '?')}")
    print(f"family:         {mf.family}")
    print(f"source:         {mf.hf_config.get('_name_or_path', '?')}")
    print(f"architecture:   {a.arch}" + (" with post-sublayer norms" if getattr(a, "post_norms", False) else ""))
    print(f"layers:         {a.n_layer}, hidden {a.n_embd}, ffn {a.n_ff}, heads {a.n_head} "
          f"(kv {a.n_kv_head}, dim {a.head_dim}), vocab {a.n_vocab}")
    if hasattr(a, "rope_dim"):
        print(f"rope:           base {a.rope_base:g}, position scale {a.rope_pos_scale:g}, "
              f"{a.rope_dim} of {a.head_dim} dims")
    else:
        print(f"rope:           2-D (position and block position), base {a.rope_base:g}")
    print(f"norm eps:       {a.norm_eps:g}; trained context {a.seq_length}; eos {a.eos_token_ids}")
    template = mf.meta.get("chat_template")
    print("chat template:  " + (f"jinja, {len(template)} characters" if template else "built in"))
    print(f"quantization:   {json.dumps(mf.quantization)}")
    tok = mf.tokenizer_info
    if tok:
        print(f"tokenizer:      {tok['type']} ({tok['filename']}, {len(mf.tokenizer_bytes())} bytes, "
              f"sha256 {tok['sha256'][:16]}...)")
    else:
        print("tokenizer:      none (convert with --tokenizer PATH to include one)")
    rows, n_params, n_bytes = [], 0, 0
    for name, info in mf.tensor_types.items():
        nel = 1
        for s in info["shape"]:
            nel *= s
        nb = sum(mf.tensor(part).nbytes for part in info.get("parts", {name: "data"}))
        n_params += nel
        n_bytes += nb
        gs = f"g{info['group_size']}" if info.get("group_size") else ""
        rows.append((name, "x".join(map(str, info["shape"])), info["type"], gs, f"{8 * nb / nel:.2f}", f"{nb:,}"))
    print(f"weights:        {n_params:,} parameters in {_fmt_bytes(n_bytes)} "
          f"({8 * n_bytes / max(1, n_params):.2f} bits per weight)")
    if not args.brief:
        print()
        print(_table(rows, ("tensor", "shape", "dtype", "group", "bits/weight", "bytes")))


def cmd_verify(args):
    """Run a model on an expected.npz (prompt_ids, prefill_logits, decode_ids, decode_logits) and
    print the max |diff| relative to max |expected| for the prefill and each decode step."""
    import numpy as np
    from glmcpu import load
    try:
        e = np.load(args.expected)
        prompt, pre, dec_ids, dec = (e["prompt_ids"], e["prefill_logits"], e["decode_ids"], e["decode_logits"])
    except (OSError, ValueError, KeyError) as err:
        raise GlmcpuError(f"{args.expected}: not an expected.npz with prompt_ids, prefill_logits, "
                          f"decode_ids and decode_logits ({err})") from None
    t0 = time.perf_counter()
    m = load(args.file, n_ctx=len(prompt) + len(dec_ids), threads=args.threads, mode=args.mode, kv=args.kv)
    print(f"loaded {args.file} ({m.family}, {args.mode} mode) in {time.perf_counter() - t0:.2f}s")
    scale = float(np.abs(pre).max())
    worst = 0.0
    t0 = time.perf_counter()
    got = m.forward(prompt)
    d = float(np.abs(got - pre).max()) / scale
    worst = max(worst, d)
    print(f"prefill  {len(prompt):4d} tokens  max|diff|/max|expected| = {d:.2e}")
    for i, tok in enumerate(dec_ids):
        got = m.forward([int(tok)])[0]
        d = float(np.abs(got - dec[i]).max()) / scale
        worst = max(worst, d)
        print(f"decode step {i}  token {int(tok):6d}  max|diff|/max|expected| = {d:.2e}  "
              f"argmax {'same' if int(got.argmax()) == int(dec[i].argmax()) else 'DIFFERENT'}")
    ok = worst <= args.tol
    print(f"{'OK' if ok else 'NOT OK'}: worst {worst:.2e} (tolerance {args.tol:g}), "
          f"{time.perf_counter() - t0:.2f}s including compile")
    return 0 if ok else 1


DTYPES = list(qtypes.NAMES)
CONVERT_DTYPES = DTYPES + ["q4_k_m", "q5_k_m"]  # the K-quant mixes (convert/mixes.py)


def _sampling(args):
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repeat_penalty, seed=args.seed)


def _stream(it, out):
    """Print pieces as they come; Ctrl-C stops the reply. Returns True if interrupted."""
    try:
        for piece in it:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        it.close()
        return True
    finally:
        pass
    return False


def _report(model, load_s):
    st = model.last_stats
    pre = st.get("prompt_tokens", 0) - st.get("cached_tokens", 0)
    print(f"[load {load_s:.2f}s | prompt {st.get('prompt_tokens', 0)} tokens ({st.get('cached_tokens', 0)} cached), "
          f"prefill {pre / max(st.get('prefill_s', 0), 1e-9):.1f} tok/s | "
          f"{st.get('new_tokens', 0)} new tokens, decode {st.get('new_tokens', 0) / max(st.get('decode_s', 0), 1e-9):.1f} tok/s"
          f" | {st.get('finish')}]", file=sys.stderr)


def default_model(args):
    """-m FILE, or the built-in demo model (said on stderr)."""
    if getattr(args, "model", None):
        return args.model
    from glmcpu import demo_model_path
    path = demo_model_path()
    print(f"glmcpu: no -m given, using the built-in demo model ({path})", file=sys.stderr)
    return path


def cmd_perplexity(args):
    from glmcpu import load
    from glmcpu.perplexity import perplexity
    path = default_model(args)
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GlmcpuError(f"{args.file}: cannot read the text ({e})") from None
    model = load(path, n_ctx=args.ctx, threads=args.threads, kv=args.kv)
    t0 = time.perf_counter()
    ppl, n = perplexity(model, text, stride=args.stride, progress=None if not args.quiet else False)
    print(f"{n} tokens scored with a {model.n_ctx}-token window in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(f"perplexity: {ppl:.4f}")


def cmd_run(args):
    from glmcpu import load
    t0 = time.perf_counter()
    model = load(default_model(args), n_ctx=args.ctx, threads=args.threads, kv=args.kv)
    load_s = time.perf_counter() - t0
    if args.verbose:
        print(f"[{model.family}, {model.threads} threads | KV cache {model.kv}, n_ctx {model.n_ctx}: "
              f"{model.arch.kv_bytes() / 1e6:.1f} MB | buffers {model.arch.scratch_bytes() / 1e6:.1f} MB]",
              file=sys.stderr)
    model.tokenizer  # fails now, with one line, if the file has no tokenizer
    chat = model.is_chat and not args.raw
    sampling = _sampling(args)
    out = sys.stdout
    if args.prompt is not None:
        if chat:
            msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
            it = model.chat(msgs, **sampling)
        else:
            it = model.generate(args.prompt, **sampling)
        interrupted = _stream(it, out)
        out.write("\n")
        out.flush()
        if args.verbose:
            _report(model, load_s)
        return 130 if interrupted else 0
    # interactive
    mode = "chat" if chat else "completion (base model: each line is continued, no history)"
    print(f"glmcpu: {model.family} {mode}, n_ctx {model.n_ctx}, {model.threads} threads. "
          f"/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply.", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to quit)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history = []
            model.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        try:
            if chat:
                msgs = system + history + [{"role": "user", "content": line}]
                it = model.chat(msgs, **sampling)
            else:
                it = model.generate(line, **sampling)
        except GlmcpuError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        interrupted = _stream(it, out)
        out.write("\n")
        out.flush()
        if interrupted:
            print("[interrupted]", file=sys.stderr)
        if chat:
            history += [{"role": "user", "content": line},
                        {"role": "assistant", "content": model.last_stats.get("text", "")}]
        if args.verbose:
            _report(model, load_s)


def cmd_serve(args):
    from .server import serve_main  # lazy: the CLI does not import FastAPI
    return serve_main(args)


def add_kv_argument(p):
    p.add_argument("--kv", default="f16", choices=["f16", "f32"],
                   help="KV cache type: f16 (default, half the memory) or f32 (the official arithmetic)")


def build_parser():
    from glmcpu import __version__, families
    p = argparse.ArgumentParser(prog="glmcpu", description="ChatGLM inference on the CPU (numpy + numba).")
    p.add_argument("--version", action="version", version=f"glmcpu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a Hugging Face checkpoint directory or a GGUF file to a glmcpu file")
    c.add_argument("src", help="checkpoint directory (config.json + *.safetensors or pytorch_model*.bin), "
                               "or a GGUF file (llama.cpp / Ollama)")
    c.add_argument("-o", "--output", required=True, help="output file (suggested extension: .glmq)")
    c.add_argument("--dtype", choices=CONVERT_DTYPES,
                   help="storage type of the weight matrices (default: f16 for a checkpoint; a GGUF file's "
                        "tensors keep their type, bit for bit); norms and biases stay f32")
    c.add_argument("--group-size", type=int, default=32, choices=[32, 64, 128],
                   help=f"values per scale for {'/'.join(qtypes.GROUPED)} (default 32)")
    c.add_argument("--embedding-dtype", choices=DTYPES, help="type of the token embedding (default: --dtype)")
    c.add_argument("--output-dtype", choices=DTYPES, help="type of the output layer (default: --dtype)")
    c.add_argument("--family", choices=families.names(),
                   help="override family detection from config.json")
    c.add_argument("--tokenizer-dir", help="directory with the tokenizer files (tokenizer.model or tokenizer.json, "
                                          "tokenizer_config.json) when they are not next to the weights")
    c.add_argument("--tokenizer", help="tokenizer file to store in the file (default: the one in SRC)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary table")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("export", help="write a glmcpu file as GGUF (llama.cpp, Ollama), the same tensor bits")
    e.add_argument("file", help="model file made by glmcpu convert")
    e.add_argument("-o", "--output", required=True, help="output file (suggested extension: .gguf)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar or tensor table")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="print a model file's metadata and tensors")
    i.add_argument("file")
    i.add_argument("--brief", action="store_true", help="metadata only, no tensor table")
    i.add_argument("--json", action="store_true", help="the raw metadata as JSON")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("verify", help="compare a model's logits with a reference expected.npz")
    v.add_argument("file")
    v.add_argument("expected", help="npz with prompt_ids, prefill_logits, decode_ids, decode_logits")
    v.add_argument("--tol", type=float, default=1e-4, help="max |diff| / max |expected| allowed (default 1e-4)")
    v.add_argument("--threads", type=int, default=None)
    v.add_argument("--mode", default="fast", choices=["fast", "exact", "reference"],
                   help="fast kernels (default), exact (dequantized float32 weights) or the numpy reference")
    v.add_argument("--kv", default="f32", choices=["f16", "f32"],
                   help="KV cache type (default f32: the official arithmetic, as the reference computed it)")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("run", help="chat with a model (or complete text with a base model)")
    r.add_argument("-m", "--model", help="model file made by glmcpu convert (default: the built-in demo model)")
    r.add_argument("-p", "--prompt", help="answer this one prompt and exit (default: interactive chat)")
    r.add_argument("--system", help="system prompt (ChatGLM3 and GLM-4; others have no system role)")
    r.add_argument("--raw", action="store_true", help="continue the prompt as plain text, no chat template")
    r.add_argument("--threads", type=int, default=None, help="default: all physical cores")
    r.add_argument("--ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    add_kv_argument(r)
    r.add_argument("-n", "--max-new-tokens", type=int, default=512)
    r.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    r.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    r.add_argument("--top-p", type=float, default=0.8, help="default 0.8")
    r.add_argument("--repeat-penalty", type=float, default=1.0, help="default 1.0 (off)")
    r.add_argument("--seed", type=int, default=None, help="same seed, same output")
    r.add_argument("-v", "--verbose", action="store_true", help="print load time, prefill and decode speed")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs: pip install 'glmcpu[server]')")
    s.add_argument("-m", "--model", default=None, help="model file (default: the built-in demo model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    s.add_argument("--threads", type=int, default=None, help="default: all physical cores")
    add_kv_argument(s)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    s.add_argument("--model-name", default=None, help="model id clients send (default: the file name without extension)")
    s.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="requests generated at once, batched into each forward pass (default 1); the KV cache "
                        "holds N sequences of --ctx tokens each")
    s.add_argument("--prefill-chunk", type=int, default=128, metavar="TOKENS",
                   help="with --parallel: prompt tokens read per step next to the running requests' tokens "
                        "(default 128); longer prompts are read over several steps")
    s.add_argument("--max-queue", type=int, default=8, help="requests that may wait beyond the running ones")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow web pages from ORIGIN (e.g. http://localhost:3000, or '*') to call the API; "
                        "repeat for several (default: none)")
    s.set_defaults(func=cmd_serve)
    pp = sub.add_parser("perplexity", help="perplexity of a model over a text file")
    pp.add_argument("-m", "--model", help="model file (default: the built-in demo model)")
    pp.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    pp.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    pp.add_argument("--stride", type=int, default=None, help="window step (default ctx / 2)")
    pp.add_argument("--threads", type=int, default=None)
    add_kv_argument(pp)
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pp.set_defaults(func=cmd_perplexity)
    sub.add_parser("bench", help="speed of a model file: glmcpu bench [-m FILE] [--threads N] [--json F] [--plot F]",
                   add_help=False)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        try:
            return bench_main(argv[1:])
        except GlmcpuError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except GlmcpuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
