"""OUT/report.html: built from hand-made rows and a tiny PNG, rendered in headless Chromium."""

from __future__ import annotations

import io
import re

from browser import Dom, render_dom

from pgray.tracking.report import (
    SECTIONS,
    Image,
    ReportData,
    Table,
    raised_flags,
    render_report,
    result_tables,
    write_report,
)


def tiny_png(width: int = 6, height: int = 4) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, [[(x + y) % 2 for x in range(width)] for y in range(height)], format="png")
    return buf.getvalue()


def hand_rows() -> list[dict]:
    base = {"dataset": "synthetic", "category": "disc", "detector": "patchguard", "steps": 2}
    clean = base | {"attack": "clean", "threat": "none", "eps": 0.0, "image_auroc": 0.9,
                    "image_auroc_ci_low": 0.8, "image_auroc_ci_high": 0.97, "pixel_auroc": 0.85,
                    "aupro": 0.6, "flags": [], "flag_notes": []}
    worst = base | {"attack": "worst_case", "threat": "linf", "eps": 8.0, "image_auroc": 0.2,
                    "image_auroc_ci_low": 0.1, "image_auroc_ci_high": 0.3, "pixel_auroc": 0.5,
                    "aupro": 0.3, "flags": ["zero_gradients"],
                    "flag_notes": ["zero_gradients: 3.0 % of images"]}
    # a string that must be escaped, not run
    protocol = base | {"attack": "protocol", "threat": "linf", "eps": 8.0, "image_auroc": 0.5,
                       "pixel_auroc": 0.6, "aupro": 0.4, "flags": [], "flag_notes": [],
                       "category": "disc"}
    return [clean, worst, protocol]


def hand_report(rows: list[dict], png: bytes) -> ReportData:
    return ReportData(
        title="Sweep <script>alert(1)</script>", config_name="search_space.yaml",
        config_text="name: tiny\nsearch: {a: <b>}\n", eps=[8.0], suite="adaptive",
        threats=["linf"], hardware={"CPUs": "2", "GPUs": "none"},
        results=result_tables(rows), curves=[Image("auroc vs eps", png)],
        panels=[Image("synthetic-disc adaptive_suite_eps8/panel_00", png),
                Image("synthetic-disc adaptive_suite_eps8/panel_01", png)],
        flags=raised_flags(rows), sweep=True,
        trials=Table("2 trials", ["target", "trial", "loss"],
                     [["synthetic/disc", "a1", "0.5"], ["synthetic/disc", "b2", "0.7"]]),
        trials_plot=Image("parallel coordinates", png),
        proxy_gap=Table("proxy vs test", ["target", "gap"], [["synthetic/disc", "+0.1"]]))


def test_report_html_is_escaped_and_complete():
    page = render_report(hand_report(hand_rows(), tiny_png()))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "{a: &lt;b&gt;}" in page
    # no network: every image is inline, no external script, stylesheet or link
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    dom = Dom(page)
    assert dom.sections == list(SECTIONS)
    # the results cell carries its interval, as results.md writes it (pgray.tracking.tables)
    text = " ".join(dom.text)
    assert "90.0 [80.0, 97.0]" in text and "20.0 [10.0, 30.0]" in text
    # the flag with its meaning (pgray.attacks.checks) and the numbers that raised it
    assert "all-zero input gradient" in text and "3.0 % of images" in text


def test_a_benchmark_report_has_no_sweep_sections():
    data = hand_report(hand_rows(), tiny_png())
    data.sweep = False
    assert Dom(render_report(data)).sections == ["results", "flags", "panels", "run"]


def test_report_renders_in_chromium_with_every_image_decoded(tmp_path):
    from pgray.tracking.plots import parallel_coordinates

    png = tiny_png(6, 4)
    data = hand_report(hand_rows(), png)
    # a categorical and a numeric parameter; a trial without a score (it failed)
    plot = parallel_coordinates(tmp_path / "trials_parallel.png", ["loss.attention_lambda",
                                                                    "pseudo.min_size"],
                                [[0.0, 10], [30000.0, 6], ["a", 14]], [0.5, 0.7, None],
                                "proxy_score")
    data.trials_plot = Image("parallel coordinates", plot.read_bytes())
    path = write_report(data, tmp_path)
    dom = Dom(render_dom(path))
    assert dom.body.get("data-loaded") == "yes"  # the load event ran: sizes are final
    assert dom.sections == list(SECTIONS)
    # curve, parallel coordinates, two panels: each a data: URI the browser decoded
    assert len(dom.images) == 4
    assert all(img["src"].startswith("data:image/png;base64,") for img in dom.images)
    sizes = [img.get("data-natural-size") for img in dom.images]
    # in page order: the curve (results), the parallel coordinates (trials), two panels
    assert sizes[1] != "6x4" and min(map(int, sizes[1].split("x"))) > 100  # the plot
    assert sizes[:1] + sizes[2:] == ["6x4"] * 3
    assert "Sweep <script>alert(1)</script>" in " ".join(dom.text)  # shown, as text
