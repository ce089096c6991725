"""Regenerate the configuration table in README.md from stream/config.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.cli.base import settings_usage
from stream.config import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def render(text: str) -> str:
    block = f"{START}\n{markdown_table(settings_usage())}\n{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), block, text, flags=re.S)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
