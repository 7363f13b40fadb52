"""docs/vertical.md's complete example runs and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "vertical.md"


def _blocks(language: str) -> list[str]:
    section = PAGE.read_text(encoding="utf-8").split("## A complete example", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_complete_example_prints_what_the_page_shows() -> None:
    code, shown = _blocks("python")[0], _blocks("text")[0]
    output = io.StringIO()

    with contextlib.redirect_stdout(output):
        exec(compile(code, str(PAGE), "exec"), {"__name__": "vertical_example"})

    printed = output.getvalue().splitlines()
    expected = shown.splitlines()
    assert [re.sub(r"[\d.]+", "#", line) for line in printed] == [
        re.sub(r"[\d.]+", "#", line) for line in expected
    ]
    number = re.compile(r"AUC ([\d.]+)")
    ours = [float(number.findall(line)[0]) for line in printed]
    page = [float(number.findall(line)[0]) for line in expected]
    assert ours == pytest.approx(page, abs=0.01)  # other CPUs round differently
    assert ours[0] == ours[1]  # split learning equals centralised training
    assert ours[0] > ours[2] + 0.01  # and beats the label party alone
