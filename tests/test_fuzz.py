"""Bad model files and bad checkpoints end in one GlmcpuError line (issue 16, "fuzz the loader").

Property: whatever is wrong with a model file or a Hugging Face checkpoint, opening it
(``glmcpu.file.ModelFile``, ``glmcpu.load`` and a forward pass; ``convert.hf.Checkpoint`` and
``convert.pipeline.convert``) ends in success or in exactly one GlmcpuError line: never another
exception, a crash, a hang or an allocation of absurd size. The mutators and the checks are those
of tools/fuzz_loader.py, which runs them for as long as one likes; here hypothesis drives them for
a bounded number of cases (derandomized, so CI is reproducible). The fuzzed cases run in that
tool's worker process (an address-space limit, a peak-RSS limit and a per-case time limit), so a
crash, a hang or a huge allocation fails the test instead of ending the test run. Fixed cases, in
this process with the allocations traced, cover every structural boundary and every defect the
fuzzing found (the regression cases at the end).
"""
import base64
import copy
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import sys
import tracemalloc
import zipfile

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import glmcpu
from glmcpu.convert.hf import Checkpoint
from glmcpu.errors import GlmcpuError
from glmcpu.file import Mapped, ModelFile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import fuzz_loader as F  # noqa: E402

PEAK_LIMIT = 64 << 20  # bytes: far above what opening the tiny inputs needs, far below an absurd size
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])


MODELS = ["model-f16", "model-q4", "model-v1", "model-0414"]  # fuzz_loader.make_sources says what each is
CHECKPOINTS = ["hf-st", "hf-sharded", "hf-bin", "hf-0414"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return F.make_sources(str(tmp_path_factory.mktemp("fuzz-sources")))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-cases")


_n = [0]


def _case_dir(scratch):
    _n[0] += 1
    return str(scratch / f"case{_n[0]}")


@pytest.fixture(scope="module")
def worker():
    w = F.Worker(mem_limit_mb=3072, rss_limit_mb=1024, timeout=120)
    yield w
    w.stop()


def run_check(worker, kind, data, scratch):
    """Write a mutated input and check it (fuzz_loader.check) in the worker process.
    Returns ("ok", None) or ("error", message)."""
    where = _case_dir(scratch)
    try:
        res = worker.run(kind, F.write_case(kind, data, where))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert res["outcome"] in ("ok", "error"), f"{res['outcome']}: {res['message']}\n{res.get('traceback', '')}"
    return res["outcome"], res["message"]


class HypothesisDraw:
    """The draw interface of fuzz_loader's mutators, over hypothesis (so failures shrink)."""

    JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                        max_leaves=6)

    def __init__(self, data):
        self.data = data

    def int(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))

    def value(self):
        return self.data.draw(st.sampled_from(F.EVIL) | self.JSON)


def _without_params(src):
    """The source with its params entry left alone (params are fuzzed by test_params_fuzz)."""
    src = copy.copy(src)
    src.fuzz_keys = [k for k in src.fuzz_keys if k != "params"]
    return src


# ---------------------------------------------------------------- property-based

@settings(max_examples=500, **FUZZ)
@given(data=st.data())
def test_model_file_fuzz(sources, worker, scratch, data):
    d = HypothesisDraw(data)
    src = _without_params(sources[d.choice(MODELS)])
    mutator = d.choice(sorted(F.MODEL_MUTATORS))
    raw, what = F.MODEL_MUTATORS[mutator](src, d)
    note(what)
    run_check(worker, "model", raw, scratch)


@settings(max_examples=120, **FUZZ)
@given(data=st.data())
def test_params_fuzz(sources, worker, scratch, data):
    d = HypothesisDraw(data)
    src = copy.copy(sources[d.choice(MODELS)])
    src.fuzz_keys = ["params"]
    raw, what = d.choice([F.m_meta_json, F.m_meta_json, F.m_meta_string])(src, d)
    note(what)
    run_check(worker, "model", raw, scratch)


@settings(max_examples=300, **FUZZ)
@given(data=st.data())
def test_checkpoint_fuzz(sources, worker, scratch, data):
    d = HypothesisDraw(data)
    src = sources[d.choice(CHECKPOINTS)]
    mutator = d.choice(sorted(set(F.HF_MUTATORS) - {"config_value"}))  # test_config_fuzz has those
    files, what = F.HF_MUTATORS[mutator](src, d)
    note(what)
    run_check(worker, "hf", files, scratch)


@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_config_fuzz(sources, worker, scratch, data):
    d = HypothesisDraw(data)
    files, what = F.h_config_value(sources[d.choice(CHECKPOINTS)], d)
    note(what)
    run_check(worker, "hf", files, scratch)


# Values the fuzzing once found unchecked (issue 16): the architectures took params and the
# families took config.json values without checking their types and ranges. Kept as regressions.
PARAMS_DEFECTS = [
    ("n_layer", "delete"), ("head_dim", [1, 2]), ("n_embd", 2**63), ("n_ff", 2**32 + 1), ("norm_eps", "F16"),
    ("rope_dim", 64), ("rope_pos_scale", [[1, 2], True]), ("n_kv_head", "q4_0"),
]
CONFIG_DEFECTS = [("_name_or_path", True), ("seq_length", [1, 2]), ("layernorm_epsilon", "F16")]


@pytest.mark.parametrize("key,value", PARAMS_DEFECTS, ids=[f"{k}={v!r:.20}" for k, v in PARAMS_DEFECTS])
def test_params_defects(sources, worker, scratch, key, value):
    def edit(params):
        if value == "delete":
            del params[key]
        else:
            params[key] = value
    raw = _model(sources["model-f16"], _meta_json("params", edit))
    assert run_check(worker, "model", raw, scratch)[0] == "error"  # in the worker: some sizes are huge


@pytest.mark.parametrize("key,value", CONFIG_DEFECTS, ids=[f"{k}={v!r:.20}" for k, v in CONFIG_DEFECTS])
def test_config_defects(sources, tmp_path, key, value):
    from glmcpu.convert.pipeline import convert
    cfg = json.loads(sources["hf-st"].files["config.json"])
    cfg[key] = value
    src = F.write_case("hf", dict(sources["hf-st"].files, **{"config.json": json.dumps(cfg).encode()}), str(tmp_path))
    with pytest.raises(GlmcpuError):
        convert(src, str(tmp_path / "out.glmq"), progress=False)


# ---------------------------------------------------------------- every structural boundary

@pytest.mark.parametrize("name", MODELS)
def test_truncated_at_every_structural_boundary(sources, scratch, name):
    src = sources[name]
    cuts = sorted({min(max(b + k, 0), len(src.raw) - 1) for b in src.boundaries for k in (-1, 0, 1)})
    assert len(cuts) > 3 * len(src.tensors)  # the length field, header keys, every tensor's ends
    for cut in cuts:
        p = F.write_case("model", src.raw[:cut], _case_dir(scratch))
        with pytest.raises(GlmcpuError, match="truncated|too short|not a safetensors") as e:
            ModelFile(p)
        assert "\n" not in str(e.value) and p in str(e.value)
        with pytest.raises(GlmcpuError):
            glmcpu.load(p)


def _opened_or_glmcpu_error(src):
    """Checkpoint(src) and reading every tensor either works or ends in one GlmcpuError line."""
    try:
        _read_all(Checkpoint(src))
    except GlmcpuError as e:
        assert "\n" not in str(e)
        return "error"
    return "ok"


def test_bin_truncated_at_every_zip_record(sources, tmp_path):
    name = "pytorch_model-00001-of-00002.bin"
    raw = sources["hf-bin"].files[name]
    records = [i for i in range(len(raw) - 3) if raw[i:i + 2] == b"PK" and raw[i + 2:i + 4] in
               (b"\x03\x04", b"\x01\x02", b"\x05\x06")]
    assert len(records) >= 6  # local headers, central directory entries, end record
    for i, cut in enumerate(sorted({min(max(r + k, 0), len(raw) - 1) for r in records for k in (-1, 0, 1, 30)})):
        src = F.write_case("hf", dict(sources["hf-bin"].files, **{name: raw[:cut]}), str(tmp_path / str(i)))
        with pytest.raises(GlmcpuError, match=name):
            _read_all(Checkpoint(src))


def test_bin_every_opcode_byte_in_the_pickle(sources, tmp_path):
    """Each of the 256 byte values as the pickle's first opcode (after PROTO)."""
    name = "pytorch_model-00001-of-00002.bin"
    members = F._zip_members(sources["hf-bin"].files[name])
    i = next(k for k, (n, _) in enumerate(members) if n.endswith("data.pkl"))
    pkl = members[i][1]
    assert pkl[:1] == b"\x80"
    outcomes = set()
    for b in range(256):
        members[i] = (members[i][0], pkl[:2] + bytes([b]) + pkl[2:])
        src = F.write_case("hf", dict(sources["hf-bin"].files, **{name: F._zip(members)}), str(tmp_path / str(b)))
        outcomes.add(_opened_or_glmcpu_error(src))
    assert "error" in outcomes


@pytest.mark.parametrize("n", [0, 1, 2, 2**31, 2**32, 2**60, 2**63, 2**64 - 1])
def test_header_length_field_never_sizes_an_allocation(sources, scratch, n):
    src = sources["model-q4"]
    p = F.write_case("model", n.to_bytes(8, "little") + src.raw[8:], _case_dir(scratch))
    tracemalloc.start()
    try:
        with pytest.raises(GlmcpuError, match="not a safetensors/glmcpu file"):
            ModelFile(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_every_byte_of_the_length_field(sources, scratch):
    src = sources["model-f16"]
    for pos in range(8):
        for v in (0x00, 0x01, 0x40, 0x80, 0xFF):
            if src.raw[pos] != v:
                raw = src.raw[:pos] + bytes([v]) + src.raw[pos + 1:]
                p = F.write_case("model", raw, _case_dir(scratch))
                with pytest.raises(GlmcpuError):
                    ModelFile(p)


def test_pristine_sources_load(sources, worker, scratch):
    """The fuzzing starts from files that are right: each opens, runs and converts."""
    for name, src in sources.items():
        kind = "model" if isinstance(src, F.Container) else "hf"
        data = src.raw if kind == "model" else src.files
        assert run_check(worker, kind, data, scratch) == ("ok", None), name


def test_worker_reports_what_the_fuzz_tests_must_never_see(sources, scratch):
    """The harness itself: another exception, a crash and a large resident size are each
    reported (so a passing fuzz test means the loaders never did any of them)."""
    w = F.Worker(mem_limit_mb=3072, rss_limit_mb=1024, timeout=120)
    try:
        res = w.run("model", None)  # check_model_file(None): a TypeError, not a GlmcpuError
        assert res["outcome"] == "exception" and res["message"].startswith("TypeError"), res
        os.kill(w.proc.pid, signal.SIGSEGV)
        w.proc.wait()
        res = w.run("model", str(scratch))
        assert res["outcome"] == "crash" and str(-signal.SIGSEGV) in res["message"], res
        w.rss_limit_mb = 1
        res = w.run("model", F.write_case("model", sources["model-f16"].raw, _case_dir(scratch)))
        assert res["outcome"] == "memory" and "was ok" in res["message"], res
    finally:
        w.stop()


def test_safetensors_library_agrees_on_accepted_headers(sources, scratch):
    """Independent reference: every tensor-entry lie glmcpu's reader accepts, the safetensors
    library (the format's reference implementation) also accepts, with the same tensors."""
    from safetensors import safe_open
    src = F.Container(sources["hf-st"].files["model.safetensors"], 8)
    rng = F.RandomDraw("safetensors-agree")
    accepted = 0
    for _ in range(60):
        raw, what = F.m_tensor_entry(src, rng)
        p = F.write_case("model", raw, _case_dir(scratch))
        try:
            m = Mapped(p)
        except GlmcpuError:
            continue
        accepted += 1
        with safe_open(p, "np") as f:
            assert sorted(f.keys()) == sorted(m.names), what
            for k in f.keys():
                assert f.get_tensor(k).tobytes() == m.tensor(k).tobytes(), (what, k)
    assert accepted > 0


# ---------------------------------------------------------------- regression cases (findings)

def _model(src, edit):
    """src's header deep-copied, edited in place by edit(header, meta), repacked."""
    h = copy.deepcopy(src.header)
    edit(h, h["__metadata__"])
    return src.pack(h)


def _meta_json(key, edit):
    def go(h, meta):
        obj = json.loads(meta[key])
        edit(obj)
        meta[key] = json.dumps(obj)
    return go


def _tok(edit):
    return _meta_json("tokenizer", edit)


def _b64_bad_padding(t):
    t["data"] = t["data"][:-1]  # one character short: "Incorrect padding"


def _b64_other_bytes(t):
    data = base64.b64decode(t["data"])
    t["data"] = base64.b64encode(data[:100] + bytes([data[100] ^ 1]) + data[101:]).decode()


def _deep_json(raw_len=200_000):
    text = b"[" * raw_len + b"]" * raw_len
    text += b" " * ((-(8 + len(text))) % 64)
    return len(text).to_bytes(8, "little") + text


def _long_int_json(src):
    raw = json.dumps(src.header).replace('"data_offsets": [0,', '"data_offsets": [1' + "0" * 5000 + ",", 1).encode()
    raw += b" " * ((-(8 + len(raw))) % 64)
    return len(raw).to_bytes(8, "little") + raw + src.data


def _duplicate_key(src):
    raw = json.dumps(src.header, separators=(",", ":"))
    name = "output_norm.weight"
    entry = json.dumps(src.header[name], separators=(",", ":"))
    raw = raw[:-1] + f',"{name}":{entry}' + "}"
    raw = raw.encode() + b" " * ((-(8 + len(raw))) % 64)
    return len(raw).to_bytes(8, "little") + raw + src.data


def _overlap(h, meta):
    a, b = h["output_norm.weight"], h["blk.1.ffn_norm.weight"]
    a["data_offsets"] = list(b["data_offsets"])


def _shift(h, meta):
    e = h["blk.0.attn_norm.weight"]
    e["data_offsets"] = [e["data_offsets"][0] + 64, e["data_offsets"][1] + 64]


def _shape_product_wraps(h, meta):
    # 2**62 * 4 = 2**64 elements: a product that wraps to 0 in 64-bit integers
    name = "blk.0.attn_norm.weight"
    b = h[name]["data_offsets"][0]
    h[name].update(shape=[2**62, 4], data_offsets=[b, b])


def _float_dim(h, meta):
    h["output_norm.weight"]["shape"] = [64.0]


def _string_offsets(h, meta):
    e = h["output_norm.weight"]
    e["data_offsets"] = [str(v) for v in e["data_offsets"]]


def _transposed(h, meta):
    h["blk.0.ffn_down.weight"]["shape"] = h["blk.0.ffn_down.weight"]["shape"][::-1]


def _parts_other_tensor(h, meta):
    t = json.loads(meta["tensors"])
    t["blk.0.ffn_down.weight"]["parts"] = {"blk.1.ffn_down.weight": "data"}
    meta["tensors"] = json.dumps(t)


def _set(key, value):
    def go(obj):
        obj[key] = value
    return go


def _tensor_field(name, key, value):
    def go(t):
        t[name][key] = value
    return go


MODEL_REGRESSIONS = [
    # (id, source, make bytes from the source, expected message)
    ("base64 padding flipped (was binascii.Error)", "model-q4", lambda s: _model(s, _tok(_b64_bad_padding)),
     "not valid base64"),
    ("tokenizer bytes changed (was loaded silently)", "model-q4", lambda s: _model(s, _tok(_b64_other_bytes)),
     "does not match its SHA-256"),
    ("tokenizer data not a string (was TypeError)", "model-q4", lambda s: _model(s, _tok(_set("data", 5))),
     "invalid 'data'"),
    ("tokenizer entry a list (was AttributeError)", "model-q4",
     lambda s: _model(s, lambda h, m: m.update(tokenizer="[1]")), "'tokenizer' is not a JSON object or null"),
    ("format_version not a string (was TypeError)", "model-f16",
     lambda s: _model(s, lambda h, m: m.update(format_version=[1])), "__metadata__ must map names to strings"),
    ("JSON nested 200000 deep (was RecursionError)", "model-f16", lambda s: _deep_json(), "not valid JSON"),
    ("5000-digit integer (was ValueError)", "model-f16", _long_int_json, "not valid JSON"),
    ("duplicate tensor name (was last-wins)", "model-f16", _duplicate_key, "appears twice"),
    ("overlapping tensors (was accepted)", "model-f16", lambda s: _model(s, _overlap), "overlap"),
    ("tensor moved onto the next one (was accepted)", "model-f16", lambda s: _model(s, _shift),
     "overlap|belong to no tensor"),
    ("bytes after the last tensor (was accepted)", "model-f16", lambda s: s.raw + bytes(64), "after the last tensor"),
    ("shape product wraps around (was ValueError)", "model-f16", lambda s: _model(s, _shape_product_wraps),
     "size does not match its shape"),
    ("float dimension (was TypeError)", "model-f16", lambda s: _model(s, _float_dim), "has shape"),
    ("offsets as strings (was TypeError)", "model-f16", lambda s: _model(s, _string_offsets), "data_offsets"),
    ("physical shape transposed (was run with the wrong shape)", "model-f16", lambda s: _model(s, _transposed),
     "expected F16 \\[64, 96\\]"),
    ("parts name another tensor (was read from it)", "model-f16", lambda s: _model(s, _parts_other_tensor),
     "has parts"),
    ("tile_rows 10**9 (was a 32 GB scratch allocation)", "model-q4",
     lambda s: _model(s, _meta_json("quantization", _set("tile_rows", 10**9))), "tile_rows"),
    ("tile_rows -1 (was ValueError)", "model-q4",
     lambda s: _model(s, _meta_json("quantization", _set("tile_rows", -1))), "tile_rows"),
    ("group_size 0 (was ZeroDivisionError)", "model-q4",
     lambda s: _model(s, _meta_json("tensors", _tensor_field("output.weight", "group_size", 0))), "group_size"),
    ("group_size 32.0 (was accepted as a float)", "model-q4",
     lambda s: _model(s, _meta_json("tensors", _tensor_field("output.weight", "group_size", 32.0))), "group_size"),
    ("tensor description a string (was TypeError)", "model-q4",
     lambda s: _model(s, _meta_json("tensors", _set("output.weight", "q4_0"))), "is not an object"),
    ("quantization a list (was AttributeError)", "model-q4",
     lambda s: _model(s, lambda h, m: m.update(quantization="[]")), "'quantization' is not a JSON object"),
    ("params a list (was AttributeError)", "model-f16",
     lambda s: _model(s, lambda h, m: m.update(params="[1]")), "'params' is not a JSON object"),
    ("architecture a list (was TypeError: unhashable)", "model-f16",
     lambda s: _model(s, _meta_json("params", _set("arch", ["chatglm"]))), "architecture"),
    ("unknown storage type", "model-f16",
     lambda s: _model(s, _meta_json("tensors", _tensor_field("output.weight", "type", "q3_k"))), "upgrade glmcpu"),
    ("data section not 64-byte aligned", "model-f16", lambda s: F.pack(s.header, s.data, 8) if
     (8 + len(json.dumps(s.header, separators=(",", ":")))) % 64 else F.pack(s.header, s.data, 16), "multiple of 64"),
]


@pytest.mark.parametrize("case", MODEL_REGRESSIONS, ids=[c[0] for c in MODEL_REGRESSIONS])
def test_model_file_regressions(sources, scratch, case):
    what, name, make, message = case
    p = F.write_case("model", make(sources[name]), _case_dir(scratch))
    tracemalloc.start()
    try:
        with pytest.raises(GlmcpuError, match=message) as e:
            ModelFile(p)
        assert "\n" not in str(e.value) and p in str(e.value)
        with pytest.raises(GlmcpuError, match=message):
            glmcpu.load(p, n_ctx=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT


def test_fifo_is_refused_not_waited_on(tmp_path):
    """A named pipe given as the model (was an open() that waited for a writer forever)."""
    fifo = tmp_path / "model.glmq"
    os.mkfifo(fifo)
    with pytest.raises(GlmcpuError, match="not a regular file"):
        glmcpu.load(str(fifo))


def test_tokenizer_bytes_checked_once_at_open(sources, scratch):
    src = sources["model-q4"]
    mf = ModelFile(F.write_case("model", src.raw, _case_dir(scratch)))
    want = base64.b64decode(json.loads(src.meta["tokenizer"])["data"])
    assert mf.tokenizer_bytes() == want
    assert hashlib.sha256(want).hexdigest() == mf.tokenizer_info["sha256"]


# ---------------------------------------------------------------- Hugging Face checkpoint regressions

def _pickle_zip(pkl, storages=(), prefix="archive"):
    """A torch-zip .bin holding data.pkl = pkl and the given (key, bytes) storages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        for k, b in storages:
            z.writestr(f"{prefix}/data/{k}", b)
    return buf.getvalue()


def _tensor_pickle(offset=0, shape=(4,), stride=(1,), numel=4, key="0", build=None):
    """Protocol-2 pickle of {"w": _rebuild_tensor_v2(FloatStorage key, offset, shape, stride)},
    written opcode by opcode (optionally followed by BUILD with a state dict on the tensor)."""
    def tup(vals):
        return b"(" + b"".join(F._pickle_int(v) for v in vals) + b"t"
    out = b"\x80\x02" + b"ccollections\nOrderedDict\n)R" + b"X\x01\x00\x00\x00w"
    out += b"ctorch._utils\n_rebuild_tensor_v2\n("
    out += b"(" + F._pickle_str("storage") + b"ctorch\nFloatStorage\n" + F._pickle_str(key)
    out += F._pickle_str("cpu") + F._pickle_int(numel) + b"tQ"
    out += F._pickle_int(offset) + tup(shape) + tup(stride) + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR"
    if build is not None:
        out += b"}" + b"".join(F._pickle_str(k) + tup(v) + b"s" for k, v in build.items()) + b"b"
    return out + b"s."


def _bin_dir(tmp_path, zip_bytes):
    """A checkpoint directory: chatglm3-tiny's config.json and pytorch_model.bin = zip_bytes."""
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(os.path.join(F.GOLDEN, "chatglm3-tiny", "config.json"), d)
    (d / "pytorch_model.bin").write_bytes(zip_bytes)
    return str(d)


def _read_all(ck):
    """Every tensor's values, read (as the converter reads them)."""
    return [float(t.rows_f32().astype("f8").sum()) for t in ck.tensors.values()]


def test_pickle_helper_is_a_valid_state_dict(tmp_path):
    """The hand-written pickle of the regression cases below is read as intended."""
    ck = Checkpoint(_bin_dir(tmp_path, _pickle_zip(_tensor_pickle(), [("0", struct.pack("<4f", 1, 2, 3, 4))])))
    assert ck.tensors["w"].rows_f32().tolist() == [1, 2, 3, 4]


BIN_REGRESSIONS = [
    # (id, pickle, expected message)
    ("negative stride reads before the storage (was an out-of-bounds read)",
     _tensor_pickle(stride=(-(2**40),)), "bad tensor geometry"),
    ("BUILD rewrites a checked tensor's strides (was an out-of-bounds read)",
     _tensor_pickle(build={"stride": (-(2**40),)}), "unexpected state"),
    ("memo index 2**26 (was a 512 MB memo table)",
     b"\x80\x02Nr" + struct.pack("<I", 2**26) + b".", "memo index"),
    ("BINBYTES8 claims 2**33 bytes (was an 8 GB allocation)",
     b"\x80\x04\x8e" + struct.pack("<Q", 2**33) + b"abc.", "malformed pickle"),
    ("tensor name not a string (was an error far from the cause)",
     _tensor_pickle().replace(b"X\x01\x00\x00\x00w", b"K\x07"), "not a string"),
]


@pytest.mark.parametrize("case", BIN_REGRESSIONS, ids=[c[0] for c in BIN_REGRESSIONS])
def test_bin_regressions(tmp_path, case):
    what, pkl, message = case
    src = _bin_dir(tmp_path, _pickle_zip(pkl, [("0", bytes(16))]))
    tracemalloc.start()
    try:
        with pytest.raises(GlmcpuError, match=message):
            _read_all(Checkpoint(src))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT


def test_bin_corrupted_byteorder_member(tmp_path):
    """A bad CRC in a small member (was zipfile.BadZipFile from an unguarded read)."""
    raw = bytearray(_pickle_zip(_tensor_pickle(), [("0", bytes(16))]))
    at = raw.index(b"archive/byteorder") + len("archive/byteorder")
    raw[at] ^= 0xFF  # the first byte of the member's data ("little")
    src = _bin_dir(tmp_path, bytes(raw))
    with pytest.raises(GlmcpuError, match="cannot read archive/byteorder"):
        Checkpoint(src)


def _sharded(sources, tmp_path, edit):
    src = sources["hf-sharded"]
    idx = json.loads(src.files["model.safetensors.index.json"])
    edit(idx)
    files = dict(src.files, **{"model.safetensors.index.json": json.dumps(idx).encode()})
    return F.write_case("hf", files, str(tmp_path))


def _map(key, value):
    def go(idx):
        idx["weight_map"][key] = value
    return go


INDEX_REGRESSIONS = [
    ("shard name a list (was TypeError: unhashable)", _map("transformer.embedding.word_embeddings.weight", [1]),
     "not the name of a .safetensors file"),
    ("shard outside the directory (was opened)", _map("transformer.embedding.word_embeddings.weight",
                                                      "../model-00001-of-00002.safetensors"), "not the name"),
    ("tensor in another shard than the index says (was accepted)",
     _map("transformer.embedding.word_embeddings.weight", "model-00002-of-00002.safetensors"),
     "is not in shard 'model-00002-of-00002.safetensors'"),
    ("missing shard", _map("x", "model-00009-of-00009.safetensors"), "missing"),
    ("weight_map not an object", lambda idx: idx.update(weight_map=[]), "weight_map"),
]


@pytest.mark.parametrize("case", INDEX_REGRESSIONS, ids=[c[0] for c in INDEX_REGRESSIONS])
def test_index_regressions(sources, tmp_path, case):
    what, edit, message = case
    with pytest.raises(GlmcpuError, match=message):
        Checkpoint(_sharded(sources, tmp_path, edit))


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b'{"num_layers": ' + b"9" * 5000 + b"}",
                                  b"\xff\xfe{}"], ids=["deep (was RecursionError)", "5000 digits (was ValueError)",
                                                       "not UTF-8"])
def test_config_json_regressions(sources, tmp_path, text):
    files = dict(sources["hf-st"].files, **{"config.json": text})
    with pytest.raises(GlmcpuError, match="config.json: not valid JSON"):
        Checkpoint(F.write_case("hf", files, str(tmp_path)))


def test_worker_memory_is_its_own_not_the_parents(tmp_path):
    """The worker's peak-memory check measures the worker alone: a test process that has grown
    large (as the full suite's does) must not make every case a "memory" finding (CI, 2026-11-24:
    getrusage's ru_maxrss carries the parent's peak across fork and exec)."""
    import numpy as np
    ballast = np.ones(60_000_000, np.float64)  # this process: +480 MB resident
    w = F.Worker(mem_limit_mb=3072, rss_limit_mb=400, timeout=120)
    try:
        empty = tmp_path / "empty.glmq"
        empty.write_bytes(b"")
        res = w.run("model", str(empty))
    finally:
        w.stop()
    assert res["outcome"] == "error" and "0 bytes" in res["message"], res
    assert res["maxrss_mb"] < 400
    del ballast
