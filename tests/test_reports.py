"""reports/: loading real asv output, engine vs torch tables, charts, report.md and index.html.

The data comes from real `asv run` invocations of tests/data/asv_tiny (see its harness.py), made
once per session: tiny-cpu (torch/engine time 1.5x, tokens/s 2x, peak device bytes 1.5x) and a
second machine name, tiny-gpu, with a taper-env.json sidecar.
"""
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("asv")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from reports import plots  # noqa: E402
from reports.compare import compare, display_table, to_markdown  # noqa: E402
from reports.dashboard import build_report  # noqa: E402
from reports.results import ResultsError, latest, load_results, write_env_sidecar  # noqa: E402
from reports.units import higher_is_better, human  # noqa: E402
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
        expected = 0.002 if r["impl"] == "engine" else 0.003
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
    assert not higher_is_better("ms_per_token") and not higher_is_better("seconds")


def test_compare_pairs_engine_with_torch(base):
    table = compare(latest(base))
    ratios = {(r["name"], r.get("dtype")): r["ratio"] for _, r in table.iterrows()}
    assert not any("roofline" in name for name, _ in ratios)
    assert ratios[("Decode.track_ms_per_token", "")] == 2.0  # 40 ms / 20 ms per token
    assert ratios[("Decode.track_peak_device_bytes", "")] == 1.5
    for dtype in ("float32", "float16"):
        assert 1.3 < ratios[("Ops.time_matmul", dtype)] < 1.6  # sleeps of 3 ms vs 2 ms
        assert ratios[("Ops.peakmem_alloc", dtype)] > 1.0  # 8 MiB vs 32 MiB buffers
    assert set(table["device"]) == {"cpu"}  # cuda was skipped on both sides

    shown = display_table(table)
    row = shown[shown["benchmark"] == "Decode.track_ms_per_token"].iloc[0]
    assert (row["engine"], row["torch"], row["speedup"]) == ("50 tokens/s", "25 tokens/s", "2.00x")
    row = shown[shown["benchmark"] == "Decode.track_peak_device_bytes"].iloc[0]
    assert (row["engine"], row["torch"]) == ("64 MiB", "96 MiB")
    assert shown.loc[shown["benchmark"] == "Ops.time_matmul", "engine"].str.endswith(" ms").all()
    md = to_markdown(shown)
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[0] == "benchmark" and header[-3:] == ["engine", "torch", "speedup"]
    assert set(header[1:-3]) == {"device", "dtype", "model", "batch"}
    assert set(shown["batch"]) == {1, ""}  # an int parameter stays an int (not 1.0)
    assert len(md.splitlines()) == 2 + len(shown)


def test_compare_needs_an_impl_parameter(base):
    with pytest.raises(ValueError, match="no 'impl' parameter"):
        compare(base.drop(columns=["impl"]))


def test_charts_are_written(base, tmp_path):
    rows = latest(base)
    table = compare(rows)
    for path in (plots.plot_ratios(table, tmp_path / "r.png"),
                 plots.plot_tokens(rows, tmp_path / "t.png"),
                 plots.plot_tokens(rows, tmp_path / "t2.png", roofline={"cpu": 80.0}),
                 plots.plot_memory(rows, tmp_path / "m.png")):
        w, h = png_size(path)
        assert w >= 400 and h >= 150
    times = rows[rows["name"] == "Ops.time_matmul"]
    assert plots.plot_tokens(times, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_for_two_machines_with_asv_publish(tiny, tmp_path):
    out = tmp_path / "report"
    paths = build_report([tiny["base"], tiny["gpu"]], out, asv=True,
                         asv_config=tiny["repo"] / "asv.conf.json")
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    for machine in ("tiny-cpu", "tiny-gpu"):
        assert f"## {machine}" in md and f"<h2>{machine}</h2>" in page
        for chart in ("speedup", "tokens", "memory"):
            assert f"{chart}_{machine}.png" in page and (out / f"{chart}_{machine}.png").exists()
    assert harness().GPU_ENV["card"] in md and "50 tokens/s" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert len(paths["charts"]) == 6
    assert paths["asv"] == out / "asv" / "index.html" and paths["asv"].exists()
    assert 'href="asv/index.html"' in page and "(asv/index.html)" in md


def test_cli_report(tiny, tmp_path, capsys):
    from taper.cli import main

    assert main(["report", "--results", str(tiny["base"]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists() and (tmp_path / "r" / "report.md").exists()
    assert main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "not a results directory" in capsys.readouterr().err
