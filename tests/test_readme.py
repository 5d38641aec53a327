"""The README's example must run as printed and show every server applying
the same commands (a newcomer copies it first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    return blocks[0]


def test_readme_example_elects_a_leader_and_applies_on_all_three_servers() -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 40
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "apply 3 -> 6" in proc.stdout
    assert "{'a': 6, 'b': 6, 'c': 6}" in proc.stdout


def test_quickstart_tool_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "quickstart.py")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "totals: {'a': 6, 'b': 6, 'c': 6}" in proc.stdout
