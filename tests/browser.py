"""Headless Chromium for tests: render a local page, read its DOM back."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest


def browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)


def render_dom(path: Path) -> str:
    """The DOM after the page's load event, as headless Chromium renders it."""
    exe = browser()
    if exe is None:
        pytest.fail("no Chromium on PATH: run `make setup` (clusters/local/install.sh"
                    " installs Debian's chromium); the report test needs a real browser")
    done = subprocess.run(
        [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--user-data-dir=" + str(path.parent / "chromium-profile"),
         "--virtual-time-budget=2000", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """The rendered DOM's section ids, images (src scheme, decoded size) and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body = a

    def handle_data(self, data):
        self.text.append(data)
