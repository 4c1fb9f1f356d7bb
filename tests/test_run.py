"""`glmcpu run`: one-shot prompts, errors as one line, and the interactive mode driven through a pty."""
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from glmcpu.convert import convert
from helpers import random_checkpoint
from test_generate import _always


def run(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "glmcpu", *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory):
    """A ChatGLM3-layout model that always answers '▁你' and never stops by itself."""
    root = tmp_path_factory.mktemp("run")
    src = random_checkpoint(str(root / "src"), "chatglm3", tweak=_always(36474))
    path = str(root / "echo.glmq")
    convert(src, path, dtype="f16", progress=False)
    return path


def test_one_shot_prompt_streams_answer(echo_model):
    rc, out, err = run("run", "-m", echo_model, "-p", "你好", "-n", "7", "--temp", "0", "-v")
    assert rc == 0, err
    assert out == "你 你 你 你 你 你 你\n"
    assert "prefill" in err and "decode" in err and "tok/s" in err


def test_raw_mode_and_sampling_flags(echo_model):
    rc, out, err = run("run", "-m", echo_model, "-p", "床前明月光", "--raw", "-n", "3", "--seed", "1",
                       "--top-k", "5", "--top-p", "0.9", "--repeat-penalty", "1.1", "--threads", "1", "--ctx", "128")
    assert rc == 0, err
    assert out.count("你") == 3


@pytest.mark.parametrize("args,needle", [
    (["-m", "/nonexistent/model.glmq", "-p", "hi"], "no such file"),
    (["-p", "hi", "-m", __file__], "not a safetensors/glmcpu file"),
    (["-p", "长" * 300, "--ctx", "64"], "context holds 64"),
])
def test_errors_are_one_line(echo_model, args, needle):
    if "-m" not in args:
        args = ["-m", echo_model] + args
    rc, out, err = run("run", *args)
    assert rc == 1 and "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_model_file_without_tokenizer(converted):
    rc, out, err = run("run", "-m", converted("glm4-tiny", "f32"), "-p", "hi")
    assert rc == 1 and "no tokenizer" in err and len(err.strip().splitlines()) == 1


class Pty:
    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(argv[0], argv)
        self.buf = b""

    def read_until(self, needle, timeout=120):
        needle = needle.encode()
        end = time.time() + timeout
        while needle not in self.buf:
            left = end - time.time()
            assert left > 0, f"timed out waiting for {needle!r}; got {self.buf[-500:]!r}"
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                assert data, f"process ended while waiting for {needle!r}; got {self.buf[-500:]!r}"
                self.buf += data
        i = self.buf.index(needle) + len(needle)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen.decode("utf-8", errors="replace")

    def send(self, text):
        os.write(self.fd, text.encode())

    def wait(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 65536)
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("process did not exit")


def test_interactive_two_turns_reset_ctrl_c_exit(echo_model):
    p = Pty([sys.executable, "-m", "glmcpu", "run", "-m", echo_model, "--temp", "0", "-n", "2000",
             "--ctx", "8192", "--system", "你是一个助手。"])
    try:
        banner = p.read_until(">>> ")
        assert "/reset" in banner and "chat" in banner
        p.send("你好\r")
        turn1 = p.read_until(">>> ")
        assert turn1.count("你") >= 2000
        p.send("再来\r")
        turn2 = p.read_until(">>> ")
        assert turn2.count("你") >= 2000
        p.send("/reset\r")
        assert "conversation reset" in p.read_until(">>> ")
        p.send("第三个问题\r")
        p.read_until("你 你 你")        # the reply has started
        p.send("\x03")                   # Ctrl-C mid-reply
        after = p.read_until(">>> ")
        assert "[interrupted]" in after and after.count("你") < 2000
        p.send("还在吗\r")               # the session goes on
        assert p.read_until(">>> ").count("你") >= 1000
        p.send("/exit\r")
        assert p.wait() == 0
    finally:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except OSError:
            pass
