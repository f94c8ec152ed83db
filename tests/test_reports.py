"""reports/: loading real asv output, units, implementations side by side, the summary, charts,
report.md and index.html.

The data comes from real `asv run` invocations of tests/data/asv_tiny (see its harness.py), made
once per session: tiny-cpu (torch/engine time 1.5x, tokens/s 2x, peak device bytes 1.5x) and a
second machine name, tiny-gpu, with a taper-env.json sidecar.
"""
import json
import math
import shutil
import struct
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import pandas as pd  # noqa: E402

from reports import plots, summary  # noqa: E402
from reports.compare import compare, display_table, wide  # noqa: E402
from reports.dashboard import PublishSetupError, build_report  # noqa: E402
from reports.results import ResultsError, latest, load_results, write_env_sidecar  # noqa: E402
from reports.units import UnitError, higher_is_better, human, worse_by  # noqa: E402
from helpers import asv_tiny_harness as harness  # noqa: E402

BENCHES = {"bench_tiny.Ops.time_matmul", "bench_tiny.Ops.peakmem_alloc",
           "bench_tiny.Decode.track_ms_per_token", "bench_tiny.Decode.track_peak_device_bytes",
           "bench_tiny.Decode.track_roofline_tokens_per_s"}


@pytest.fixture(scope="session")
def base(tiny):
    return load_results(tiny["base"])


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_frame_has_one_row_per_parameter_set(base, tiny):
    assert set(base["benchmark"]) == BENCHES
    assert set(base["machine"]) == {"tiny-cpu"}
    assert set(base["commit"]) == {tiny["commit"]}
    assert str(base["date"].dt.tz) == "UTC"
    # Ops: impl x device x dtype = 8 per benchmark; Decode: impl x device x model = 4.
    assert base.groupby("benchmark").size().to_dict() == {
        b: (8 if ".Ops." in b else 4) for b in BENCHES}
    for col in ("impl", "device", "dtype", "model", "batch"):
        assert col in base.columns
    batches = base["batch"].dropna()
    assert set(batches) == {1} and all(type(b) is int for b in batches)
    assert base.loc[base["device"] == "cuda", "status"].eq("skipped").all()
    assert base.loc[base["device"] == "cuda", "value"].isna().all()
    assert base.loc[base["device"] == "cpu", "status"].eq("ok").all()
    units = base.groupby("name")["unit"].first().to_dict()
    assert units == {"Ops.time_matmul": "seconds", "Ops.peakmem_alloc": "bytes",
                     "Decode.track_ms_per_token": "ms_per_token",
                     "Decode.track_peak_device_bytes": "bytes",
                     "Decode.track_roofline_tokens_per_s": "tokens_per_s"}
    kinds = base.groupby("name")["kind"].first()
    assert kinds["Ops.time_matmul"] == "time" and kinds["Decode.track_ms_per_token"] == "track"
    assert base.loc[0, "cpu"] and base.loc[0, "ram"]  # from asv's machine.json


def test_time_rows_carry_stats_and_samples(base):
    rows = base[(base["name"] == "Ops.time_matmul") & (base["status"] == "ok")]
    assert len(rows) == 4
    for _, r in rows.iterrows():
        assert r["repeat"] == 12 and r["number"] == 1
        assert len(r["samples"]) == 12
        assert r["q25"] <= r["value"] <= r["q75"]
        assert r["ci_lo"] <= r["value"] <= r["ci_hi"]
        expected = 0.010 if r["impl"] == "engine" else 0.015
        assert expected <= r["value"] < expected * 1.3
    track = base[(base["name"] == "Decode.track_ms_per_token") & (base["status"] == "ok")]
    assert track.set_index("impl")["value"].to_dict() == {"engine": 20.0, "torch": 40.0}
    assert track["samples"].isna().all() and track["q25"].isna().all()


def test_loader_agrees_with_asv_own_reader(base, tiny):
    from asv.results import Results

    [path] = [p for p in (tiny["base"] / "tiny-cpu").glob("*.json") if p.name != "machine.json"]
    res = Results.load(str(path))
    for bench in BENCHES:
        params = res.get_result_params(bench)
        values = res.get_result_value(bench, params)
        ours = base[base["benchmark"] == bench]["value"].tolist()
        assert len(ours) == len(values)
        for a, b in zip(ours, values):
            assert (math.isnan(a) and (b is None or math.isnan(b))) or a == b


def test_two_machines_and_the_sidecar(tiny):
    df = load_results([tiny["base"], tiny["gpu"]])
    assert set(df["machine"]) == {"tiny-cpu", "tiny-gpu"}
    gpu = df[df["machine"] == "tiny-gpu"]
    env = harness().GPU_ENV
    assert set(gpu["card"]) == {env["card"]} and set(gpu["driver"]) == {env["driver"]}
    assert set(gpu["clocks"]) == {env["clocks"]} and set(gpu["cpu"]) == {env["cpu"]}
    assert df.loc[df["machine"] == "tiny-cpu", "card"].isna().all()
    assert len(latest(df)) == len(df)  # one commit per machine


def corrupt(src, tmp_path, edit):
    dst = tmp_path / "results"
    shutil.copytree(src, dst)
    [path] = [p for p in (dst / "tiny-cpu").glob("*.json") if p.name != "machine.json"]
    edit(path)
    return dst, path


def test_malformed_result_files_name_the_file_and_fault(tiny, tmp_path):
    def truncate(p):
        p.write_text(p.read_text()[:200])

    dst, path = corrupt(tiny["base"], tmp_path / "a", truncate)
    with pytest.raises(ResultsError, match=rf"{path.name}: not valid JSON"):
        load_results(dst)

    def drop_columns(p):
        data = json.loads(p.read_text())
        del data["result_columns"]
        p.write_text(json.dumps(data))

    dst, path = corrupt(tiny["base"], tmp_path / "b", drop_columns)
    with pytest.raises(ResultsError, match=rf"{path.name}: missing key 'result_columns'"):
        load_results(dst)

    def short_result(p):
        data = json.loads(p.read_text())
        data["results"]["bench_tiny.Ops.time_matmul"][0].pop()
        p.write_text(json.dumps(data))

    dst, path = corrupt(tiny["base"], tmp_path / "c", short_result)
    with pytest.raises(ResultsError, match=r"'bench_tiny.Ops.time_matmul' field 'result' .*8"):
        load_results(dst)

    dst, _ = corrupt(tiny["base"], tmp_path / "d", lambda p: None)
    (dst / "benchmarks.json").unlink()
    with pytest.raises(ResultsError, match=r"benchmarks.json: missing"):
        load_results(dst)

    dst, _ = corrupt(tiny["base"], tmp_path / "e", lambda p: None)
    (dst / "tiny-cpu" / "taper-env.json").write_text('{"gpu": "x"}')
    with pytest.raises(ResultsError, match=r"taper-env.json: unknown keys \['gpu'\]"):
        load_results(dst)
    with pytest.raises(ResultsError, match="not a results directory"):
        load_results(tmp_path / "nowhere")


def test_results_of_an_older_parameter_list_are_left_out_and_named(tiny, tmp_path):
    """A benchmark that gained a parameter since a result was written: that result cannot be read
    against today's names, so it is left out (asv publish drops it too) and named, never misread."""
    def drop_a_param(p):
        data = json.loads(p.read_text())
        row = data["results"]["bench_tiny.Ops.time_matmul"]
        row[1] = row[1][:-1]
        p.write_text(json.dumps(data))

    full = load_results(tiny["base"])
    dst, path = corrupt(tiny["base"], tmp_path, drop_a_param)
    df = load_results(dst)
    assert "bench_tiny.Ops.time_matmul" not in set(df["benchmark"])
    assert len(df) == (full["benchmark"] != "bench_tiny.Ops.time_matmul").sum()
    [stale] = df.attrs["stale"]
    assert stale.startswith(f"{path.name}: bench_tiny.Ops.time_matmul")


def test_sidecar_round_trip(tmp_path):
    path = write_env_sidecar(tmp_path, "box", card="NVIDIA H100 80GB HBM3", driver="550.54")
    assert json.loads(path.read_text()) == {"card": "NVIDIA H100 80GB HBM3", "driver": "550.54",
                                            "clocks": None, "cpu": None}


def test_units():
    assert human(0.00208, "seconds") == "2.08 ms"
    assert human(2.5e-6, "seconds") == "2.5 µs"
    assert human(1.5, "seconds") == "1.5 s"
    assert human(20.0, "ms_per_token") == "50 tokens/s"
    assert human(64 * 2**20, "bytes") == "64 MiB"
    assert human(1536, "bytes") == "1.5 KiB" and human(3 * 2**30, "bytes") == "3 GiB"
    assert human(0.00425 * 1000, "seconds") == "4.25 s" and human(4250e-6, "seconds") == "4.25 ms"
    assert human(float("nan"), "seconds") == "—"
    assert higher_is_better("tokens_per_s") and higher_is_better("achieved_gb_per_s")
    assert higher_is_better("utilization_percent") and higher_is_better("gb_per_s")
    assert not higher_is_better("ms_per_token") and not higher_is_better("seconds")
    assert not higher_is_better("ms") and not higher_is_better("bytes")


@pytest.mark.parametrize("unit", ["percent", "unit", "things_per_s", "", None])
def test_a_unit_without_direction_is_an_error(unit):
    with pytest.raises(UnitError, match="has no direction"):
        higher_is_better(unit)


@pytest.mark.parametrize("base, head, unit, worse", [
    (2.0, 3.0, "seconds", 1.5), (3.0, 2.0, "tokens_per_s", 1.5), (92, 40, "utilization_percent",
                                                                   2.3),
    (0.0, 0.0, "ms", 1.0), (0.0, 1.0, "ms", math.inf), (5.0, 0.0, "tokens_per_s", math.inf),
    (0.0, 5.0, "tokens_per_s", 0.0), (1.0, -1.0, "bytes", math.nan), (math.nan, 1.0, "s", math.nan),
])
def test_worse_by(base, head, unit, worse):
    got = worse_by(base, head, unit)
    assert (math.isnan(got) and math.isnan(worse)) or got == pytest.approx(worse)


def test_compare_pairs_engine_with_torch(base):
    table = compare(latest(base))
    ratios = {(r["name"], r.get("dtype")): r["ratio"] for _, r in table.iterrows()}
    assert not any("roofline" in name for name, _ in ratios)
    assert ratios[("Decode.track_ms_per_token", "")] == 2.0  # 40 ms / 20 ms per token
    assert ratios[("Decode.track_peak_device_bytes", "")] == 1.5
    for dtype in ("float32", "float16"):
        assert 1.3 < ratios[("Ops.time_matmul", dtype)] < 1.6  # sleeps of 15 ms vs 10 ms
        assert ratios[("Ops.peakmem_alloc", dtype)] > 1.0  # 8 MiB vs 32 MiB buffers
    assert set(table["device"]) == {"cpu"}  # cuda was skipped on both sides
    shown = display_table(table)
    row = shown[shown["benchmark"] == "Decode.track_ms_per_token"].iloc[0]
    assert (row["engine"], row["torch"], row["speedup"]) == ("50 tokens/s", "25 tokens/s", "2.00x")
    assert set(shown["batch"]) == {1, ""}  # an int parameter stays an int (not 1.0)


def as_impl(rows, impl, factor):
    """Real torch rows relabelled as another implementation whose numbers are `factor` times."""
    out = rows.assign(impl=impl, params_repr=rows["params_repr"].str.replace("'torch'",
                                                                             f"'{impl}'"))
    for col in ("value", "ci_lo", "ci_hi", "q25", "q75"):
        out[col] = out[col] * factor
    out["samples"] = out["samples"].map(lambda s: [x * factor for x in s]
                                        if isinstance(s, list) else s)
    return out


def with_impls(frame):
    """The real rows plus two implementations made from torch's: an alternative with half of
    torch's numbers (7.5 ms against the engine's 10 ms matmul), and a raw-array baseline at a
    tenth of them that must never count as "the best other"."""
    t = frame[frame["impl"] == "torch"]
    return pd.concat([frame, as_impl(t, "onnxruntime", 0.5), as_impl(t, "numpy", 0.1)],
                     ignore_index=True)


def test_wide_table_every_impl_and_the_best_other(base):
    table = wide(latest(with_impls(base)))
    matmul = table[(table["name"] == "Ops.time_matmul") & (table["dtype"] == "float32")].iloc[0]
    assert matmul["impls"] == ["engine", "torch", "onnxruntime", "numpy"]
    assert matmul["best"] == "onnxruntime"  # numpy is faster still, but a raw baseline
    assert matmul["ratio"] == pytest.approx(matmul["ratios"]["onnxruntime"])
    assert 0.6 < matmul["ratio"] < 0.8 and 1.3 < matmul["ratios"]["torch"] < 1.6
    assert matmul["ratios"]["numpy"] < 0.2
    assert matmul["n"] == {"engine": 12, "torch": 12, "onnxruntime": 12, "numpy": 12}
    assert matmul["ratio_lo"] <= matmul["ratio"] <= matmul["ratio_hi"]  # from asv's 99% CIs
    assert not matmul["quick"]
    track = table[table["name"] == "Decode.track_ms_per_token"].iloc[0]
    assert track["best"] == "onnxruntime" and track["ratio"] == 1.0  # 20 ms vs 40/2 ms
    assert math.isnan(track["ratio_lo"]) and track["quick"]  # a track value: one number
    assert "roofline" not in " ".join(table["name"])
    assert "impl" not in table.columns and "device" in table.columns


def test_summary_models_suites_and_notes(base):
    table = wide(latest(base))
    models = summary.models(table)
    assert list(models["metric"]) == ["decode tokens/s"] and list(models["model"]) == \
        ["tiny-llama"]
    suites = summary.suites(table)
    row = suites.iloc[0]
    assert (row["suite"], row["device"], row["compared"], row["wins"], row["losses"]) == \
        ("bench_tiny", "cpu", 6, 6, 0)
    assert row["geomean"] > 1.4
    assert summary.is_tiny("llama:tiny") and not summary.is_tiny("llama:tinyllama-1.1b")
    # A decode step timed two ways, pointing opposite ways: the dashboard says so.
    steps = base[base["name"] == "Decode.track_ms_per_token"]
    steps = steps.assign(benchmark="bench_tiny.Decode.time_decode_step",
                         name="Decode.time_decode_step", unit="seconds",
                         value=steps["impl"].map({"engine": 0.08, "torch": 0.02}))
    notes = summary.disagreements(wide(latest(pd.concat([base, steps], ignore_index=True))))
    assert len(notes) == 1 and "Decode.time_decode_step says 0.25x" in notes[0]
    assert "Decode.track_ms_per_token says 2.00x" in notes[0] and "one sample" in notes[0]


def test_charts_are_written(base, tmp_path):
    rows = latest(base)
    table = wide(rows)
    for path in (plots.plot_ratios(table, tmp_path / "r.png", ["device", "dtype"]),
                 plots.plot_tokens(rows, tmp_path / "t.png"),
                 plots.plot_tokens(rows, tmp_path / "t2.png", roofline={"cpu": 80.0}),
                 plots.plot_memory(rows, tmp_path / "m.png")):
        w, h = png_size(path)
        assert w >= 400 and h >= 150
    times = rows[rows["name"] == "Ops.time_matmul"]
    assert plots.plot_tokens(times, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert plots.plot_history(rows, tmp_path / "h.png") is None  # one commit: no history


def test_report_for_two_machines_with_asv_publish(tiny, tmp_path):
    out = tmp_path / "report"
    paths = build_report([tiny["base"], tiny["gpu"]], out, asv=True,
                         asv_config=tiny["repo"] / "asv.conf.json")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert md.index("## Summary") < md.index("## tiny-cpu") < md.index("## tiny-gpu")
    assert page.index("<h2>Summary</h2>") < page.index("<h2>tiny-cpu</h2>")
    for machine in ("tiny-cpu", "tiny-gpu"):
        for chart in (f"ratio_{machine}_bench_tiny", f"tokens_{machine}", f"memory_{machine}"):
            assert f"{chart}.png" in page and (out / f"{chart}.png").exists()
    assert harness().GPU_ENV["card"] in md and "50 tokens/s" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert len(paths["charts"]) == 6
    assert paths["asv"] == out / "asv" / "index.html" and paths["asv"].exists()
    assert 'href="asv/index.html#bench_tiny.Ops.time_matmul"' in page
    assert "(asv/index.html)" in md
    # The tiny suite's table: only the columns that apply, constants in the caption.
    assert "<caption>device cpu</caption>" in page
    header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[0] == "benchmark" and set(cols[1:4]) == {"dtype", "model", "batch"}
    assert cols[4:] == ["engine", "torch", "n", "engine vs best other"]
    assert "±" in page and "x vs torch (" in page  # values with intervals, ratios with theirs
    assert 'class="badge quick">n=1' in page  # track values are single numbers
    # The run's dates, not the commit's.
    started = load_results(tiny["base"])["started_at"].min().strftime("%Y-%m-%d %H:%M")
    assert f"run: {started}" in md


def test_asv_publish_is_checked_once(tiny, tmp_path, monkeypatch):
    from reports import dashboard

    calls = []
    check = dashboard.check_publish
    monkeypatch.setattr(dashboard, "check_publish", lambda conf: calls.append(conf) or check(conf))
    paths = build_report(tiny["base"], tmp_path / "report", asv=True, asv_config=tiny["repo"] / "asv.conf.json")
    assert paths["asv"].exists() and calls == [tiny["repo"] / "asv.conf.json"]


def test_history_and_regressions_over_two_commits(tiny, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny["repo"], repo)
    harness().commit_slowdown(repo, 2)
    results = tmp_path / "results"
    shutil.copytree(tiny["base"], results)
    harness().run(repo, tiny["home"], results, "tiny-cpu")  # the second commit, 2x slower engine
    out = tmp_path / "report"
    paths = build_report(results, out)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert (out / "history_tiny-cpu.png").exists() and "history_tiny-cpu.png" in page
    line = next(x for x in md.splitlines() if x.startswith("- tiny-cpu: "))
    assert "3 suspect regressions (not re-measured)" in line
    assert "bench_tiny.Ops.time_matmul('engine', 'cpu', 'float32')" in line
    assert "torch" not in line  # only the implementation under test is flagged
    assert 'class="badge reg"' in page


def test_asv_publish_outside_a_checkout_fails_before_writing(tiny, tmp_path, capsys):
    from taper.cli import main

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny["repo"] / "asv.conf.json", lone / "asv.conf.json")  # no git here
    out = tmp_path / "report"
    with pytest.raises(PublishSetupError, match="is not a git checkout"):
        build_report(tiny["base"], out, asv=True, asv_config=lone / "asv.conf.json")
    assert not out.exists()
    assert main(["report", "--results", str(tiny["base"]), "--out", str(out), "--asv-publish",
                 "--asv-config", str(tmp_path / "none.json")]) == 2
    assert "asv config not found" in capsys.readouterr().err and not out.exists()


def test_cli_report(tiny, tmp_path, capsys):
    from taper.cli import main

    assert main(["report", "--results", str(tiny["base"]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists() and (tmp_path / "r" / "report.md").exists()
    assert main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "not a results directory" in capsys.readouterr().err


def test_one_headline_per_model_case(base):
    # A suite with tokens/s and ms per token of one decode (as suites/bench_llm records both):
    # the summary shows one headline for it, tokens/s first.
    rate = base[base["name"] == "Decode.track_ms_per_token"]
    rate = rate.assign(benchmark="bench_tiny.Decode.track_tokens_per_s",
                       name="Decode.track_tokens_per_s", unit="tokens_per_s",
                       value=1000.0 / rate["value"])
    models = summary.models(wide(latest(pd.concat([base, rate], ignore_index=True))))
    assert list(models["benchmark"]) == ["bench_tiny.Decode.track_tokens_per_s"]
    assert models["ratio"].iloc[0] == 2.0


def test_tensor_parallel_results_appear_in_the_report(tiny, tmp_path):
    """bench/tp_decode.py's JSON beside a results directory's benchmarks.json becomes the report's
    tensor-parallel table (the committed two-H200 run as the input); other JSON there is left alone."""
    res = tmp_path / "results"
    shutil.copytree(tiny["base"], res)
    real = Path(__file__).resolve().parents[1] / "measurements" / "h2x200" / "tp_decode.json"
    shutil.copy(real, res / "tp_decode_x2.json")
    (res / "tp_decode_other.json").write_text('{"bench": "something else"}')
    paths = build_report(res, tmp_path / "report")
    md = Path(paths["markdown"]).read_text()
    assert "### Tensor parallel" in md and "llama:llama-2-70b" in md and "tok/s on NVIDIA H200 x2" in md
    assert md.count("tp_decode_x2.json") == 6 and "tp_decode_other.json" not in md
    assert "greedy tokens identical" in md and "TP=2 / TP=1 decode | 1.34x" in md
    assert "<h3>Tensor parallel</h3>" in Path(paths["html"]).read_text()


def test_latest_per_row_takes_each_row_from_the_newest_run_that_measured_it():
    """A GPU box measured piecemeal: family A in run 1, family B in run 2 (A not run there: NaN). The
    dashboard shows both, each with every implementation from its own run, never a mix."""
    import pandas as pd

    from reports.results import latest_per_row
    nan = float("nan")
    rows = [("c1", 1, "a", "engine", 10.0), ("c1", 1, "a", "torch", 5.0), ("c1", 1, "b", "engine", 7.0),
            ("c2", 2, "a", "engine", nan), ("c2", 2, "a", "torch", nan), ("c2", 2, "b", "engine", 8.0),
            ("c2", 2, "b", "torch", 4.0)]
    df = pd.DataFrame([{"machine": "m", "commit": c, "date": pd.Timestamp(d, unit="s"), "name": "T.x",
                        "model": mod, "impl": i, "value": v} for c, d, mod, i, v in rows])
    got = latest_per_row(df)
    assert sorted(zip(got["model"], got["impl"], got["commit"])) == [
        ("a", "engine", "c1"), ("a", "torch", "c1"), ("b", "engine", "c2"), ("b", "torch", "c2")]
