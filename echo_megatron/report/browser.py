"""Open ``report.html`` in headless Chromium, as a reader would: do the images load, does anything overflow the page
width, does the console stay quiet; and take a screenshot (``echo-megatron report ... --screenshot PNG``).

No new dependency: the ``chromium`` binary (Debian package ``chromium``) is run with ``--headless --dump-dom`` on a
copy of the page with a small probe injected (a first ``<script>`` that records ``error`` events and
``console.error`` / ``console.warn`` calls, and a last one that, on ``load``, writes the facts as JSON into a
``<pre>`` of the DOM that Chromium prints). Console messages that Chromium itself logs (``--enable-logging``
``CONSOLE`` lines) count as well. The report has no scripts of its own, so any console output is a finding.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE_ID = "__echo_probe"
_HEAD_PROBE = """<script>
window.__echo_console = [];
window.addEventListener('error', e => window.__echo_console.push('error: ' + (e.message || e.target.outerHTML.slice(0, 80))), true);
for (const level of ['error', 'warn']) {
  const orig = console[level];
  console[level] = (...a) => { window.__echo_console.push(level + ': ' + a.join(' ')); orig.apply(console, a); };
}
</script>"""
_LOAD_PROBE = (
    """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const facts = {
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40)),
    scroll_width: document.documentElement.scrollWidth,
    inner_width: window.innerWidth,
    console: window.__echo_console,
  };
  const pre = document.createElement('pre');
  pre.id = 'PROBE_ID';
  pre.textContent = JSON.stringify(facts);
  document.body.appendChild(pre);
});
</script>"""
).replace("PROBE_ID", PROBE_ID)


@dataclass(frozen=True)
class PageCheck:
    """What a headless Chromium saw on the page."""

    images: int  # <img> elements
    broken: list[str] = field(default_factory=list)  # alt text of images that did not load (naturalWidth 0)
    scroll_width: int = 0  # document.documentElement.scrollWidth
    inner_width: int = 0  # window.innerWidth
    console: list[str] = field(default_factory=list)  # errors, warnings and console messages

    @property
    def overflows(self) -> bool:
        return self.scroll_width > self.inner_width

    @property
    def ok(self) -> bool:
        return not self.broken and not self.overflows and not self.console


def find_chromium() -> str | None:
    """The first Chromium binary on PATH, else None."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def inject_probe(page: str) -> str:
    """The page with the probe scripts: one right after ``<head>`` (or at the start), one before ``</body>``."""
    m = re.search(r"<head[^>]*>", page, re.I)
    at = m.end() if m else 0
    page = page[:at] + _HEAD_PROBE + page[at:]
    end = page.lower().rfind("</body>")
    return page + _LOAD_PROBE if end < 0 else page[:end] + _LOAD_PROBE + page[end:]


def check_page(html_path: str, width: int = 1280, height: int = 900, timeout: float = 120.0) -> PageCheck:
    """Load ``html_path`` in headless Chromium at ``width`` x ``height`` CSS pixels and report what it saw.

    Raises RuntimeError when no Chromium is installed or it printed no probe result.
    """
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(f"no Chromium on PATH (tried {', '.join(BINARIES)})")
    with open(html_path, encoding="utf-8") as f:
        page = inject_probe(f.read())
    # the copy sits next to the original, so relative links resolve the same
    fd, probe_path = tempfile.mkstemp(suffix=".html", dir=os.path.dirname(os.path.abspath(html_path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        r = _run(
            binary,
            [
                f"--window-size={width},{height}",
                "--virtual-time-budget=10000",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
                "file://" + os.path.abspath(probe_path),
            ],
            timeout,
        )
    finally:
        os.unlink(probe_path)
    m = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', r.stdout, re.S)
    if m is None:
        raise RuntimeError(f"Chromium printed no probe result (exit {r.returncode}): {r.stderr[-2000:]}")
    facts = json.loads(html.unescape(m.group(1)))
    logged = [ln.split("] ", 1)[-1] for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return PageCheck(
        images=int(facts["images"]),
        broken=list(facts["broken"]),
        scroll_width=int(facts["scroll_width"]),
        inner_width=int(facts["inner_width"]),
        console=list(dict.fromkeys([*facts["console"], *logged])),
    )


def screenshot(
    html_path: str, png_path: str, width: int = 1280, height: int = 1800, timeout: float = 120.0
) -> str:
    """A ``width`` x ``height`` PNG of the top of the page as headless Chromium renders it; returns ``png_path``."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(f"no Chromium on PATH (tried {', '.join(BINARIES)})")
    out = os.path.abspath(png_path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}.png"  # written whole, then renamed
    r = _run(
        binary,
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={tmp}",
            "file://" + os.path.abspath(html_path),
        ],
        timeout,
    )
    if r.returncode != 0 or not os.path.isfile(tmp):
        raise RuntimeError(f"Chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}")
    os.replace(tmp, out)
    return out
