"""docs/tutorial.md part 2 cannot rot: its bash and python blocks run, in order, in an empty folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tested by tests/test_tutorial.py"


def tutorial_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "tutorial.md").read_text()
    assert MARKER in text, "the tutorial lost the marker of its tested part"
    return re.findall(r"```(bash|python)\n(.*?)```", text.split(MARKER, 1)[1], flags=re.S)


def test_the_tested_part_covers_the_users_day():
    commands = " ".join(code for _, code in tutorial_blocks())
    for step in ("dpae train", "dpae certify", "dpae report", "dpae attack", "dpae audit", "dpae recompute",
                 "stack.certify"):
        assert step in commands


@pytest.mark.slow
def test_offline_tutorial_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for language, code in tutorial_blocks():
        argv = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{language} block failed:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    runs = tmp_path / "runs" / "tutorial"
    assert (runs / "report" / "certified-accuracy.png").is_file()
    assert (runs / "cert" / "certified-accuracy.png").is_file()
    for name in ("cert", "cert-ours", "attack", "audit", "cert-alpha0.01"):
        assert (runs / name / "summary.json").is_file(), name
    assert len((runs / "cert" / "certify.jsonl").read_text().splitlines()) == 3
    assert "class 967" in done.stdout
