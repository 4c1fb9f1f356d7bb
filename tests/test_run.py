"""`glmcpu run`: one-shot prompts, errors as one line, and the interactive mode driven through a pty."""
import os
import pty
import re
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


def _stats(text):
    """(prompt tokens, cached tokens, new tokens, finish) from the -v report line of a turn."""
    m = re.search(r"prompt (\d+) tokens \((\d+) cached\).*?(\d+) new tokens.*\| (\w[\w ]*)\]", text)
    assert m, f"no -v report in {text[-300:]!r}"
    return int(m[1]), int(m[2]), int(m[3]), m[4]


def _kill(p):
    try:
        os.kill(p.pid, signal.SIGKILL)
    except OSError:
        pass


def test_interactive_turns_keep_history_and_reset(echo_model):
    """Two chat turns: each reply is complete (-n tokens), the second prompt carries the first
    turn (longer prompt, the cached part reused), /reset forgets it, /exit ends with status 0.
    Replies of 8 tokens prove what replies of 2000 did; -v's report shows the history."""
    n = 8
    p = Pty([sys.executable, "-m", "glmcpu", "run", "-m", echo_model, "--temp", "0", "-n", str(n),
             "--ctx", "256", "--system", "你是一个助手。", "-v"])
    try:
        banner = p.read_until(">>> ")
        assert "/reset" in banner and "chat" in banner
        p.send("你好\r")
        turn1 = p.read_until(">>> ")
        assert turn1.count("你") - 1 == n                # the echo of the question holds one
        prompt1, cached1, new1, finish1 = _stats(turn1)
        assert (cached1, new1, finish1) == (0, n, "length")
        p.send("再来\r")
        turn2 = p.read_until(">>> ")
        assert turn2.count("你") == n
        prompt2, cached2, new2, finish2 = _stats(turn2)
        assert prompt2 > prompt1 + n and cached2 >= prompt1 and (new2, finish2) == (n, "length")
        p.send("/reset\r")
        assert "conversation reset" in p.read_until(">>> ")
        p.send("再来\r")
        turn3 = p.read_until(">>> ")
        prompt3, cached3, new3, _ = _stats(turn3)
        assert turn3.count("你") == n and cached3 == 0 and prompt3 < prompt2 and new3 == n
        p.send("/exit\r")
        assert p.wait() == 0
    finally:
        _kill(p)


def test_interactive_ctrl_c_stops_a_reply_and_the_session_goes_on(echo_model):
    """Ctrl-C mid-reply stops it ([interrupted], back at the prompt) and the next turn, with the
    interrupted one in its history, replies again and can be stopped again. -n 50000: a reply
    Ctrl-C failed to stop would run for minutes, so the check has no race; a stopped one costs
    a few tokens."""
    n = 50000
    p = Pty([sys.executable, "-m", "glmcpu", "run", "-m", echo_model, "--temp", "0", "-n", str(n),
             "--ctx", "65536", "-v"])
    try:
        p.read_until(">>> ")
        p.send("第三个问题\r")
        p.read_until("你 你 你")        # the reply has started
        p.send("\x03")                   # Ctrl-C mid-reply
        after = p.read_until(">>> ")
        assert "[interrupted]" in after
        prompt1, _, new1, finish1 = _stats(after)
        assert 3 <= new1 < n and finish1 == "None"
        p.send("还在吗\r")               # the session goes on
        p.read_until("你 你 你")
        p.send("\x03")
        again = p.read_until(">>> ")
        assert "[interrupted]" in again
        prompt2, cached2, new2, _ = _stats(again)
        assert prompt2 >= prompt1 + new1 and cached2 >= prompt1 and 3 <= new2 < n
        p.send("/exit\r")
        assert p.wait() == 0
    finally:
        _kill(p)
