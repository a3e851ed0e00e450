"""``report.html`` in a real browser (headless Chromium, where the Debian package ``chromium`` is installed): every
image loads, nothing overflows the page width, the console stays quiet. The probe itself is checked on a page
built to fail all three, so a pass means something."""

from __future__ import annotations

import pytest
from test_report_html import make_demo_runs

from echo_megatron.report.browser import check_page, find_chromium, screenshot
from echo_megatron.report.html import write_report

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (apt-get install -y chromium): the report is not checked in a browser here",
)


def test_report_renders_cleanly_in_chromium(tmp_path):
    base, rl = make_demo_runs(tmp_path / "runs")
    rep = write_report([str(base), str(rl)], str(tmp_path / "out"), title="demo report")
    for width in (1280, 760):  # a desktop window and a narrow one
        seen = check_page(rep.path, width=width)
        assert seen.images == len(rep.images) >= 8, seen
        assert seen.broken == [], seen
        assert seen.scroll_width <= seen.inner_width == width, seen
        assert seen.console == [], seen
        assert seen.ok
    png = screenshot(rep.path, str(tmp_path / "shot.png"), width=1000, height=700)
    with open(png, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1000


def test_probe_sees_broken_images_overflow_and_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<img alt='broken' src='data:image/png;base64,AAAA'>"
        "<div style='width: 3000px'>wide</div>"
        "<script>console.error('boom')</script></body></html>"
    )
    seen = check_page(str(page), width=800)
    assert seen.images == 1 and seen.broken == ["broken"]
    assert seen.overflows and seen.scroll_width >= 3000
    assert any("boom" in m for m in seen.console)
    assert not seen.ok
