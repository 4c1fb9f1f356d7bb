"""README's set-up commands are the ones CI runs."""
import os
import re

from helpers import REPO


def _readme_commands():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", setup, re.S)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert cmds[1] in ci.splitlines()
    assert "pytest" in cmds[1] and "glmcpu" in cmds[0]
