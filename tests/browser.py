"""What a reader sees: a page opened in a real headless Chromium (Debian's ``chromium``, which ``.ci/run``
installs), laid out at a laptop's window size. A script added to a copy of the page reports the text laid
out in the first screen and the page's whole text (scripts and styles left out), read from the DOM that
Chromium dumps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1280, 900

_PROBE = """
<script>
window.addEventListener('load', () => {
  setTimeout(() => {
    const H = window.innerHeight, seen = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const n = walker.currentNode, t = n.textContent.trim();
      if (!t || !n.parentElement || n.parentElement.closest('script,style')) continue;
      const r = document.createRange(); r.selectNodeContents(n);
      const b = r.getBoundingClientRect();
      if (b.height > 0 && b.width > 0 && b.top < H && b.bottom > 0) seen.push(t);
    }
    const clone = document.body.cloneNode(true);
    clone.querySelectorAll('script,style').forEach(e => e.remove());
    const out = document.createElement('pre');
    out.id = '__probe';
    out.textContent = JSON.stringify({
      first_screen: seen.join('\\n'), all_text: clone.textContent,
      scroll_width: document.documentElement.scrollWidth, title: document.title,
      plots: document.querySelectorAll('.js-plotly-plot .main-svg').length,
    });
    document.body.appendChild(out);
  }, 500);
});
</script>
"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail(
            "Chromium is needed for the page tests: apt-get install chromium fonts-noto-cjk (.ci/run does)"
        )
    return exe


def view(page: Path) -> dict:
    """Open ``page`` (inside its run folder, so its assets load) and return what the reader sees."""
    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(page.parent, folder)
        probe = folder / f"__probe_{page.name}"
        text = page.read_text(encoding="utf-8")
        text = text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE
        probe.write_text(text, encoding="utf-8")
        r = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={WIDTH},{HEIGHT}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    m = re.search(r'<pre id="__probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"Chromium did not render {page.name}: {r.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(m.group(1)))
