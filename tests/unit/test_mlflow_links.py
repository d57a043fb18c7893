"""The links pgray prints into MLflow's UI match the routes of the installed MLflow UI."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from pgray.tracking.mlflow_links import compare_url, runs_url


def _ui_bundle() -> str:
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "\n".join(p.read_text(errors="ignore") for p in js.glob("*.js"))


def test_compare_link_is_the_ui_compare_route_with_its_query_format():
    url = compare_url("sqlite:///x.db", "3", ["a1", "b2"])
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?")
    assert unquote(url.split("?", 1)[1]) == 'runs=["a1","b2"]&experiments=["3"]'
    assert compare_url("http://127.0.0.1:5001/", "3", ["a1"]).startswith(
        "http://127.0.0.1:5001/#/compare-runs?")
    # the UI's own builder of this route, in the installed MLflow
    bundle = _ui_bundle()
    assert '"/compare-runs"' in bundle
    assert re.search(r"getCompareRunPageRoute\(\w,\w\)\{const \w=`\?runs=\$\{JSON\.stringify"
                     r"\(\w\)\}&experiments=\$\{JSON\.stringify\(\w\)\}`", bundle)


def test_runs_link_names_the_experiment():
    assert runs_url("http://127.0.0.1:5001", "7").endswith("#/experiments/7/runs")
