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


def _model_rows(clean: float, worst: float, **extra) -> list[dict]:
    base = {"dataset": "synthetic", "category": "disc", "detector": "patchguard",
            "pixel_auroc": 0.8, "aupro": 0.5, "flags": [], "flag_notes": []} | extra
    return [base | {"attack": "clean", "setting": "clean", "threat": "none", "eps": 0.0,
                    "image_auroc": clean},
            base | {"attack": "worst_case", "setting": "worst_case", "threat": "linf",
                    "eps": 8.0, "image_auroc": worst}]


def _sweep_report(tmp_path, benchmarks: dict[str, tuple[list, dict]]):
    """The sweep's page over hand-made final benchmarks (rank -> rows, proxies)."""
    from pgray.config.search_space import load_search_space, resolve_space_path
    from pgray.tracking.records import BenchmarkResult, SweepResult
    from pgray.tracking.report import sweep_report_data

    results = []
    for rank, (rows, proxies) in benchmarks.items():
        folder = tmp_path / "final" / rank
        folder.mkdir(parents=True)
        results.append(BenchmarkResult(rows, folder / "results.parquet", folder / "results.md",
                                       "", 0, len(rows), proxies=proxies))
    result = SweepResult(out=tmp_path, parent_run_id="p", experiment_path="e", trials=[],
                         best={}, best_configs={}, benchmarks=results)
    return sweep_report_data(load_search_space(resolve_space_path("demo")), result, tmp_path)


def _disc_cells(table: Table) -> list[str]:
    return next(cells for cells in table.rows if cells[0] == "disc")


def test_a_sweep_report_shows_each_ranks_own_numbers(tmp_path):
    """Seeds on, top_n 2: top1's rows are two seeds (mean clean 0.8, worst 0.5), top2's one
    unseeded model (clean 0.95, worst 0.1). The page showed top2's number under "the mean
    over 2 training seeds"; each rank now has its own tables, as results.md has."""
    top1 = [r for seed, (c, w) in ((0, (0.7, 0.4)), (1, (0.9, 0.6)))
            for r in _model_rows(c, w, seed=seed)]
    top2 = _model_rows(0.95, 0.1)
    proxy = {"epoch": 3, "proxy_clean_image_auroc": 0.9, "proxy_worst_image_auroc": 0.5}
    data = _sweep_report(tmp_path, {"top1": (top1, {"synthetic/disc": proxy | {"seed": 0}}),
                                    "top2": (top2, {"synthetic/disc": proxy | {"seed": None}})})
    seeded = [t for t in data.results if "mean over 2 training seeds" in t.note]
    assert len(seeded) == 1
    cells = _disc_cells(seeded[0])  # the seeds' mean, not top2's model
    # no seed row carries a test-set interval here, so the mean has none either
    assert cells[1] == "80.0" and cells[3] == "50.0"
    assert [t.title for t in data.results] == ["top1: synthetic, patchguard (eps 8/255)",
                                               "top2: synthetic, patchguard (eps 8/255)"]
    second = _disc_cells(data.results[1])
    assert second[1] == "95.0" and second[3] == "10.0"
    assert "mean over" not in data.results[1].note
    # the proxy gap: each rank against its own rows (top1: seed 0's, top2: its model's)
    assert [cells[:4] for cells in data.proxy_gap.rows] == [
        ["synthetic/disc top1", "3", "0.9000", "0.7000"],
        ["synthetic/disc top2", "3", "0.9000", "0.9500"]]


def test_the_proxy_gap_is_the_trials_own_model_under_the_proxys_threat():
    """The clean twin's rows come first (unseeded, as the trial's), and an L2 budget has the
    largest eps: neither may stand for the trial's test numbers."""
    from pgray.tracking.sweep_report import proxy_gap_rows

    twin = _model_rows(0.99, 0.01, detector="patchguard_clean")
    l2 = [r | {"threat": "l2", "eps": 16.0, "image_auroc": 0.02}
          for r in _model_rows(0.9, 0.9) if r["attack"] == "worst_case"]
    rows = twin + l2 + _model_rows(0.8, 0.3)
    proxy = {"epoch": 3, "proxy_clean_image_auroc": 0.9, "proxy_worst_image_auroc": 0.5}
    head, cells = proxy_gap_rows({"synthetic/disc": proxy}, rows)
    assert cells == [["synthetic/disc", "3", "0.9000", "0.8000", "+0.100", "0.5000",
                      "0.3000", "+0.200"]]


def test_an_incomplete_run_says_so_before_its_results():
    from pgray.tracking.tables import incomplete_note

    note = incomplete_note(["synthetic/weave adaptive_suite_eps8: RuntimeError: boom"], 6)
    assert note.startswith("Incomplete: 1 of 6 evaluation jobs failed (synthetic/weave")
    data = hand_report(hand_rows(), tiny_png())
    data.incomplete = note
    page = render_report(data)
    assert page.index('id="incomplete"') < page.index('<section id="results"')
    assert "no robustness card was written" in " ".join(Dom(page).text)
    assert 'id="incomplete"' not in render_report(hand_report(hand_rows(), tiny_png()))


def test_the_report_shows_operating_points_and_an_incomplete_mean():
    rows = _model_rows(0.9, 0.4) + [r | {"category": "weave"} for r in _model_rows(0.5, 0.4)
                                    if r["attack"] == "clean"]
    rows[0] |= {"tpr_at_fpr1": 0.5, "tpr_at_fpr5": 0.7}
    rows[1] |= {"tpr_at_fpr1": 0.1, "tpr_at_fpr5": 0.2, "image_auroc_attack_normal": 0.6,
                "image_auroc_attack_anomalous": 0.55}
    tables = result_tables(rows)
    assert [t.title for t in tables] == ["synthetic, patchguard (eps 8/255)",
                                         "synthetic, patchguard (eps 8/255): operating points"]
    assert tables[0].rows[-1][:4] == ["mean of 1/2 (left out: weave)", "90.0", "–", "40.0"]
    assert _disc_cells(tables[1]) == ["disc", "50.0", "10.0", "70.0", "20.0", "60.0", "55.0"]
    page = render_report(ReportData(
        title="b", config_name="c", config_text="", eps=[8.0], suite="adaptive",
        threats=["linf"], hardware={}, results=tables, curves=[], panels=[], flags=[]))
    assert page.count("<tr class=mean>") == 2  # both mean rows marked, labels and all


def test_curves_keep_detectors_and_threats_apart(tmp_path):
    """PatchGuard, its clean twin and PaDiM on one category at the same eps are three lines,
    not one; an L2 budget is a figure of its own (its eps is in another unit)."""
    from pgray.tracking.plots import curve_series, robustness_curves

    rows = [r | {"eps": eps, "image_auroc": value}
            for det, value in (("patchguard", 0.6), ("patchguard_clean", 0.1),
                               ("padim", 0.3))
            for eps in (2.0, 8.0)
            for r in _model_rows(0.9, 0.0, detector=det) if r["attack"] == "worst_case"]
    rows += [r | {"threat": "l2", "eps": 1.0, "image_auroc": 0.2}
             for r in _model_rows(0.9, 0.0) if r["attack"] == "worst_case"]
    series = curve_series(rows)
    assert sorted(series) == ["l2", "linf"]
    assert series["linf"] == {
        "synthetic/disc padim worst_case": ([2.0, 8.0], [0.3, 0.3]),
        "synthetic/disc patchguard worst_case": ([2.0, 8.0], [0.6, 0.6]),
        "synthetic/disc patchguard_clean worst_case": ([2.0, 8.0], [0.1, 0.1])}
    assert series["l2"] == {"synthetic/disc patchguard worst_case": ([1.0], [0.2])}
    paths = robustness_curves(rows, tmp_path)
    assert sorted(p.name for p in paths) == ["auroc_vs_eps.png", "auroc_vs_eps_l2.png"]


def test_a_sweep_report_shows_the_rank_agreement_and_the_front(tmp_path):
    """The sweep's rank agreement (a table and a proxy-vs-test scatter per category) and the
    trials' front on the test split (the pick and the recipe marked), from the figures the
    sweep writes into OUT; without them the page says it was not measured."""
    from pgray.config.search_space import load_search_space, resolve_space_path
    from pgray.tracking.plots import front_plots, rank_scatters
    from pgray.tracking.rank_agreement import RANK_METRICS, rank_agreement
    from pgray.tracking.records import SweepResult
    from pgray.tracking.report import sweep_report_data
    from pgray.tracking.trials import TrialSummary

    values = {"a": (0.2, 0.9, 0.3), "b": (0.6, 0.5, 0.6), "c": (0.9, 0.1, 0.2)}
    trials = [TrialSummary(trial_id=t, target="synthetic/disc", params={}, metrics={
        f"proxy_{m}": v[0] for m in RANK_METRICS}, epochs=2,
        state="completed") for t, v in values.items()]
    tests = {t: dict.fromkeys(RANK_METRICS, v[0]) for t, v in values.items()}
    front = {"synthetic/disc": {"picked": "b", "recipe": {
        "clean_image_auroc": 0.7, "worst_image_auroc": 0.05, "worst_pixel_auroc": 0.4},
        "trials": {t: {"clean_image_auroc": v[0] + 0.05, "worst_image_auroc": v[1],
                       "worst_pixel_auroc": v[2]} for t, v in values.items()}}}
    result = SweepResult(out=tmp_path, parent_run_id="p", experiment_path="e", trials=trials,
                         best={}, best_configs={},
                         rank_agreement=rank_agreement(trials, tests, bootstrap=50),
                         front=front)
    written = rank_scatters(result, tmp_path) + front_plots(result, tmp_path)
    assert [p.name for p in written] == ["rank_synthetic-disc.png", "front_synthetic-disc.png"]
    space = load_search_space(resolve_space_path("demo"))
    dom = Dom(render_report(sweep_report_data(space, result, tmp_path)))
    text = " ".join(dom.text)
    assert "Spearman and Kendall of proxy and test over the trials" in text
    assert "+1.00 [+1.00, +1.00]" in text and "3 at the last epoch (no selection)" in text
    captions = [i["alt"] for i in dom.images]
    assert "rank_synthetic-disc" in captions and "front_synthetic-disc" in captions
    result.rank_agreement, result.front = {}, {}
    for png in written:
        png.unlink()
    text = " ".join(Dom(render_report(sweep_report_data(space, result, tmp_path))).text)
    assert "Not measured" in text and "No trial was evaluated on the test split" in text


def test_a_paper_scale_sweeps_description_fits_and_links_the_full_results(tmp_path):
    """54 categories of 24 trials each (the paper's scale): the run's description stays under
    MLflow's 8,000 characters, names results.md and report.html and their place, and says how
    many of its lines only results.md holds; a small sweep's fits whole, picks, numbers and
    logged models included."""
    from pgray.config.search_space import load_search_space, resolve_space_path
    from pgray.tracking.records import BenchmarkResult, SweepResult
    from pgray.tracking.sweep_run import DESCRIPTION_LIMIT, run_description
    from pgray.tracking.trials import TrialSummary

    space = load_search_space(resolve_space_path("demo"))
    seed = space.fixed_config().train.seed

    def sweep(categories: int) -> SweepResult:
        keys = [f"mvtec/c{i:02d}" for i in range(categories)]
        trials = {k: [TrialSummary(f"t{k[-2:]}_{j}", k, {}, {}, 2, "completed")
                      for j in range(24)] for k in keys}
        models = {f"m-{i:032d}": {"detector": "patchguard", "dataset": "mvtec",
                                  "category": k.split("/")[1], "seed": seed, "clean_ad": 0.9,
                                  "protocol_ad": 0.5, "worst_case_ad": 0.25, "threat": "linf",
                                  "eps": 8.0} for i, k in enumerate(keys)}
        bench = BenchmarkResult([], tmp_path, tmp_path, "", 0, 0, models=models)
        result = SweepResult(out=tmp_path, parent_run_id="r" * 32, experiment_path="e",
                             trials=[t for ts in trials.values() for t in ts],
                             best={k: ts[:1] for k, ts in trials.items()}, best_configs={},
                             benchmarks=[bench], max_concurrent=8)
        result.compare_links = {k: "http://mlflow:5000/#/compare-runs?runs=" + ",".join(
            "r" * 32 for _ in ts) for k, ts in trials.items()}
        return result

    big = run_description(space, sweep(54), "http://mlflow:5000", "3")
    assert len(big) <= DESCRIPTION_LIMIT
    assert "**results.md**" in big and "**report.html**" in big
    assert f"http://mlflow:5000/#/experiments/3/runs/{'r' * 32}/artifacts" in big
    assert re.search(r"\.\.\. \d+ more lines in results\.md$", big)
    assert "| mvtec/c00 | t00_0 | 0.900 | 0.500 | 0.250 | linf 8.0 | m-" in big
    small = run_description(space, sweep(2), "http://mlflow:5000", "3")
    assert "more lines" not in small and small.count("compare-runs") == 2
    assert "| mvtec/c01 | t01_0 |" in small
