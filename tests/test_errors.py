"""Bad inputs give one clear line naming the file and the problem, never a traceback."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError
from helpers import golden, read_raw_tensors, write_safetensors, write_torch_zip


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "glmcpu", *args], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def _assert_one_line_error(rc, err, *needles):
    assert rc == 1
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _bin_checkpoint(tmp_path, pickle_bytes):
    src = tmp_path / "evil"
    os.makedirs(src)
    shutil.copy(os.path.join(golden("chatglm3-tiny"), "config.json"), src)
    tensors = read_raw_tensors(golden("chatglm3-tiny"))
    write_torch_zip(src / "pytorch_model.bin", tensors, pickle_bytes=pickle_bytes)
    return src


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    # GLOBAL os.system, then call it: what a malicious checkpoint does to run code on load
    evil = (b"\x80\x02cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
            + f"touch {marker}".encode() + b"\x85R.")
    src = _bin_checkpoint(tmp_path, evil)
    with pytest.raises(GlmcpuError, match=r"refusing to load.*'os\.system'"):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)
    assert not marker.exists()
    rc, out, err = _cli("convert", str(src), "-o", str(tmp_path / "x.glmq"))
    _assert_one_line_error(rc, err, "pytorch_model.bin", "os.system")
    assert not marker.exists() and not (tmp_path / "x.glmq").exists()


def test_pickle_with_other_dangerous_globals_refused(tmp_path):
    for mod, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"),
                      ("numpy.core.multiarray", "_reconstruct")]:
        evil = b"\x80\x02c" + f"{mod}\n{name}\n".encode() + b")R."
        src = _bin_checkpoint(tmp_path / name, evil)
        with pytest.raises(GlmcpuError, match="refusing to load"):
            convert(str(src), str(tmp_path / "x.glmq"), progress=False)


def test_legacy_and_corrupted_bin(tmp_path):
    src = tmp_path / "legacy"
    os.makedirs(src)
    shutil.copy(os.path.join(golden("chatglm3-tiny"), "config.json"), src)
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(GlmcpuError, match="legacy"):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)
    (src / "pytorch_model.bin").write_bytes(b"garbage" * 10)
    with pytest.raises(GlmcpuError, match="pytorch_model.bin: not a torch checkpoint"):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)


def test_truncated_and_corrupted_model_files(tmp_path, converted):
    good = open(converted("chatglm3-tiny", "f16"), "rb").read()
    cases = {
        "truncated.glmq": (good[: len(good) - 1000], "truncated"),
        "header_cut.glmq": (good[:100], "truncated"),
        "tiny.glmq": (good[:5], "too short"),
        "garbage.glmq": (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 64, "not valid JSON"),
        "huge_len.glmq": (b"\xff" * 64, "not a safetensors/glmcpu file"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(GlmcpuError, match=msg):
            glmcpu.load(str(p))
        rc, out, err = _cli("info", str(p))
        _assert_one_line_error(rc, err, name, msg)


def test_plain_safetensors_is_not_a_model(tmp_path):
    p = tmp_path / "plain.safetensors"
    write_safetensors(p, {"a": ("F32", np.zeros(4, np.float32))})
    with pytest.raises(GlmcpuError, match="not a glmcpu model"):
        glmcpu.load(str(p))


def test_missing_file_and_directory_inputs(tmp_path):
    rc, _, err = _cli("info", str(tmp_path / "nope.glmq"))
    _assert_one_line_error(rc, err, "nope.glmq", "no such file")
    empty = tmp_path / "empty"
    os.makedirs(empty)
    rc, _, err = _cli("convert", str(empty), "-o", str(tmp_path / "x.glmq"))
    _assert_one_line_error(rc, err, "empty", "no config.json")
    rc, _, err = _cli("convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.glmq"))
    _assert_one_line_error(rc, err, "missing", "no such directory")
    shutil.copy(os.path.join(golden("chatglm3-tiny"), "config.json"), empty)
    rc, _, err = _cli("convert", str(empty), "-o", str(tmp_path / "x.glmq"))
    _assert_one_line_error(rc, err, "no weights found")
    rc, _, err = _cli("convert", golden("chatglm3-tiny"), "-o", str(tmp_path / "no" / "dir" / "x.glmq"))
    _assert_one_line_error(rc, err, "output directory does not exist")


def test_unknown_family_cli(tmp_path):
    src = tmp_path / "llama"
    shutil.copytree(golden("chatglm3-tiny"), src)
    os.chmod(src / "config.json", 0o644)
    (src / "config.json").write_text('{"model_type": "llama"}')
    rc, _, err = _cli("convert", str(src), "-o", str(tmp_path / "x.glmq"))
    _assert_one_line_error(rc, err, "unsupported: model_type 'llama'")


def test_shape_mismatch_between_config_and_weights(tmp_path):
    import json
    src = tmp_path / "bad"
    shutil.copytree(golden("chatglm3-tiny"), src)
    os.chmod(src / "config.json", 0o644)
    cfg = json.load(open(src / "config.json"))
    cfg["ffn_hidden_size"] = 128
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GlmcpuError, match="config and weights disagree"):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)


def test_context_larger_than_ram_is_refused_before_allocating(converted):
    """A KV cache bigger than the machine's RAM: one clear error at load (numpy would reserve it
    lazily and the process would die later)."""
    from glmcpu.models.args import physical_memory
    ram = physical_memory()
    path = converted("chatglm3-tiny", "f16")
    per_token = 2 * 2 * 2 * 16 * 2  # K and V, 2 layers, 2 KV groups, head_dim 16, float16 (the default)
    with pytest.raises(GlmcpuError, match="KV cache, more than this machine's"):
        glmcpu.load(path, n_ctx=ram // per_token + 1)
    rc, out, err = _cli("run", "-m", path, "--ctx", str(ram // per_token + 1), "-p", "hi")
    _assert_one_line_error(rc, err, "use a smaller context")
