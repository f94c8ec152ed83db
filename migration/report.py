"""`taper verify` results: the data (LayerResult, VerifyReport) and its renderings — a terminal table,
JSON, Markdown and an HTML page with a per-layer error plot.

JSON schema (read by reports.drift / the regression gate)::

    {"model": str, "dtype": str, "device": str,
     "layers": [{"name", "max_abs", "max_rel", "mean_abs", "cosine", "nan", "inf", "min_passing_atol",
                 "passed", ...extra keys: "module", "shape", "rtol", "atol", "input_passed", "torch_max_abs",
                 "note"}],
     "summary": {"passed": bool, "first_divergence": name or null, "top1_agreement", "top5_overlap", "kl",
                 ...extra keys: "max_abs", "max_rel", "cosine" (of the final output), "confirmed", "compared",
                 "failed", "note"}}

Layers are in torch's execution order (the order forward hooks fire: a module after its children).
Non-finite numbers (an infinite relative error, say) are written as null: the file is strict JSON.
This module imports neither torch nor the engine.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LayerResult:
    name: str                     # output key: module name [@call] [:output index]; "<output>" for the model
    module: str                   # qualified module name
    shape: tuple
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    nan: int
    inf: int
    min_passing_atol: float
    passed: bool
    rtol: float
    atol: float
    input_passed: bool | None = None   # the layer's primary input, judged the same way (None: not captured)
    torch_max_abs: float | None = None  # reduced precision: torch's own error against the fp64 run
    note: str = ""
    op: str = ""                       # exported route: the node's ATen op (aten.addmm.default)
    source: str = ""                   # exported route: the Python source line (model.py:42 in forward)


@dataclass
class VerifyReport:
    model: str
    dtype: str
    device: str
    layers: list = field(default_factory=list)
    first_divergence: str | None = None
    confirmed: bool | None = None      # the first divergence re-run on the reference inputs still fails
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    kl: float | None = None
    reference: str = "torch"          # "torch" or "torch float64" (reduced precision), or "golden ..."
    note: str = ""
    unmatched: dict = field(default_factory=dict)  # {"torch_only": [...], "engine_only": [...]}
    route: str = ""                   # "hand" (engine model code), "export" (torch.export program), "impls"
    candidate: str = "engine"         # the implementation compared with the reference
    perplexity: dict | None = None     # quantisation cost: {"reference", "candidate", "tokens", "text"}
    max_kl: float | None = None        # fail when kl exceeds it (taper verify --max-kl)
    # failing intermediate outputs explained as inherited rounding (migration.verify.explain_inherited):
    # every failing output whose input passes matches when re-run on the reference inputs, and the
    # model's outputs pass. They are reported, and do not fail the verdict.
    inherited: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        kl_ok = self.max_kl is None or (self.kl is not None and self.kl <= self.max_kl)
        excused = set(self.inherited)
        return all(r.passed or r.name in excused for r in self.layers) and bool(self.layers) and kl_ok

    @property
    def failed(self) -> list:
        return [r for r in self.layers if not r.passed]

    def layer(self, name: str) -> LayerResult:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def has_nodes(self) -> bool:
        """Rows carry ATen ops and source lines (the exported route)."""
        return any(r.op for r in self.layers)

    def torch_errors_present(self) -> bool:
        return any(r.torch_max_abs is not None for r in self.layers)

    def final(self) -> LayerResult | None:
        for r in self.layers:
            if r.name == "<output>":
                return r
        return self.layers[-1] if self.layers else None

    # ---- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        fin = self.final()
        layers = []
        for r in self.layers:
            d = asdict(r)
            d["shape"] = list(r.shape)
            layers.append({k: _num(v) for k, v in d.items()})
        summary = {
            "passed": self.passed, "first_divergence": self.first_divergence,
            "top1_agreement": _num(self.top1_agreement), "top5_overlap": _num(self.top5_overlap), "kl": _num(self.kl),
            "max_abs": _num(fin.max_abs) if fin else None, "max_rel": _num(fin.max_rel) if fin else None,
            "cosine": _num(fin.cosine) if fin else None, "confirmed": self.confirmed,
            "compared": len(self.layers), "failed": len(self.failed), "reference": self.reference, "note": self.note,
            "route": self.route, "candidate": self.candidate, "inherited": list(self.inherited),
        }
        if self.perplexity is not None:
            summary["perplexity"] = {k: _num(v) if isinstance(v, float) else v for k, v in self.perplexity.items()}
        if self.max_kl is not None:
            summary["max_kl"] = self.max_kl
        return {"model": self.model, "dtype": self.dtype, "device": self.device, "layers": layers,
                "summary": summary, "unmatched": self.unmatched}

    def to_json(self, indent: int = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyReport":
        s = d.get("summary", {})
        layers = []
        for x in d["layers"]:
            kw = {k: x.get(k) for k in LayerResult.__dataclass_fields__}
            kw["shape"] = tuple(kw["shape"] or ())
            for k in ("note", "op", "source"):
                kw[k] = kw[k] or ""
            for k in ("max_abs", "max_rel", "mean_abs", "min_passing_atol"):
                kw[k] = math.inf if kw[k] is None else kw[k]
            kw["cosine"] = math.nan if kw["cosine"] is None else kw["cosine"]
            layers.append(LayerResult(**kw))
        return cls(d["model"], d["dtype"], d["device"], layers, s.get("first_divergence"), s.get("confirmed"),
                   s.get("top1_agreement"), s.get("top5_overlap"), s.get("kl"), s.get("reference", "torch"),
                   s.get("note", ""), d.get("unmatched", {}), s.get("route", ""), s.get("candidate", "engine"),
                   s.get("perplexity"), s.get("max_kl"), list(s.get("inherited") or []))

    # ---- renderings ----------------------------------------------------------------------------------
    def table(self, only_failed: bool = False, max_rows: int | None = None) -> str:
        return format_table(self, only_failed, max_rows)

    def markdown(self) -> str:
        return to_markdown(self)

    def html(self, plot_path=None) -> str:
        return to_html(self, plot_path)


def _num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _g(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}e}" if v != 0 else "0"
    return str(v)


def _cos(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.7f}"


def _status(rep: VerifyReport, r: LayerResult) -> str:
    if r.name == rep.first_divergence:
        return "FIRST" + (" (confirmed)" if rep.confirmed else " (not confirmed)" if rep.confirmed is False else "")
    if r.passed:
        return "ok"
    if r.name in rep.inherited:
        return "inherited"
    return "fail" if r.input_passed is not False else "fail (input)"


def _rows(rep: VerifyReport, only_failed: bool, max_rows: int | None):
    rows = [r for r in rep.layers if not only_failed or not r.passed]
    cut = 0
    if max_rows is not None and len(rows) > max_rows:
        keep = {id(r) for r in rows[:max_rows]}
        first = [r for r in rows if r.name == rep.first_divergence]
        rows2 = [r for r in rows if id(r) in keep]
        for r in first:  # the first divergence is always shown
            if id(r) not in keep:
                rows2.append(r)
        cut = len(rows) - len(rows2)
        rows = rows2
    return rows, cut


def summary_lines(rep: VerifyReport) -> list:
    n, f = len(rep.layers), len(rep.failed)
    lines = [f"verdict: {'PASS' if rep.passed else 'FAIL'}  ({n - f}/{n} outputs within tolerance; "
             f"reference: {rep.reference})"]
    if rep.inherited:
        lines.append(f"inherited: {len(rep.inherited)} failing intermediate output(s) match when re-run on the "
                     "reference inputs, and the model outputs pass: rounding carried in from upstream, not a "
                     "porting error (" + ", ".join(rep.inherited[:6]) + (", ..." if len(rep.inherited) > 6 else "") + ")")
    if rep.first_divergence:
        c = {True: "confirmed: re-run on the reference inputs it still fails",
             False: "not confirmed: on the reference inputs it matches", None: "not re-run"}[rep.confirmed]
        lines.append(f"first divergence: {rep.first_divergence}  ({c})")
        where = where_text(rep.layer(rep.first_divergence)) if any(r.name == rep.first_divergence
                                                                    for r in rep.layers) else ""
        if where:
            lines.append(f"  at {where}")
    if rep.top1_agreement is not None:
        lines.append(f"teacher-forced logits: top-1 agreement {rep.top1_agreement:.4f}, top-5 overlap "
                     f"{rep.top5_overlap:.4f}, KL(ref || engine) {_g(rep.kl)}")
    if rep.perplexity is not None:
        p = rep.perplexity
        lines.append(f"perplexity on {p['text']} ({p['tokens']} tokens): reference {p['reference']:.4g}, "
                     f"candidate {p['candidate']:.4g}")
    if rep.note:
        lines.append(f"note: {rep.note}")
    um = rep.unmatched or {}
    missing = um.get("reference_outputs_not_produced")
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        lines.append(f"reference outputs not produced: {shown} (the {rep.candidate} model never called "
                     f"{'it' if len(missing) == 1 else 'them'}; look there first)")
    if um.get("outputs_only"):
        lines.append(f"outputs only, no layer taps: {um['outputs_only'][0].removesuffix(': outputs only')}")
    if um.get("torch_only") or um.get("engine_only"):
        lines.append(f"not compared: {len(um.get('torch_only', []))} torch-only and "
                     f"{len(um.get('engine_only', []))} engine-only module(s)")
    return lines


def where_text(r: LayerResult) -> str:
    """'aten.addmm.default in encoder.layer.0.attention.self.query, model.py:42 in forward' (exported
    route), or the module name."""
    parts = [r.op, f"in {r.module}" if r.module and r.module != r.name else "", r.source and f"at {r.source}"]
    return " ".join(p for p in parts if p)


HEAD = ("#", "layer", "shape", "max_abs", "max_rel", "mean_abs", "cosine", "nan/inf", "min_atol", "atol", "status")
NODE_HEAD = ("op", "module", "source")


def _node_cells(r: LayerResult) -> tuple:
    op = r.op.removeprefix("aten.").removesuffix(".default")
    return (op or "-", r.module if r.module and r.module != r.name else "-", r.source or "-")


def format_table(rep: VerifyReport, only_failed: bool = False, max_rows: int | None = None) -> str:
    """The terminal table; with a torch noise run, `torch_err` is torch's own max error against it."""
    rows, cut = _rows(rep, only_failed, max_rows)
    index = {id(r): i for i, r in enumerate(rep.layers)}
    te = rep.torch_errors_present()
    nodes = rep.has_nodes()
    head = (HEAD[:-1] + ("torch_err",) + HEAD[-1:] if te else HEAD) + (NODE_HEAD if nodes else ())
    body = [head] + [(str(index[id(r)]), r.name, "x".join(map(str, r.shape)) or "()", _g(r.max_abs), _g(r.max_rel),
                      _g(r.mean_abs), _cos(r.cosine), f"{r.nan}/{r.inf}", _g(r.min_passing_atol), _g(r.atol))
                     + ((_g(r.torch_max_abs),) if te else ()) + (_status(rep, r),) + (_node_cells(r) if nodes else ())
                     for r in rows]
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    right = set(range(len(head) - 1 - (len(NODE_HEAD) if nodes else 0))) - {1, 2}
    out = [f"taper verify: {rep.model}  dtype={rep.dtype}  device={rep.device}"
           + (f"  candidate={rep.candidate}" if rep.candidate != "engine" else "")
           + (f"  route={rep.route}" if rep.route else "")]
    for j, row in enumerate(body):
        out.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    if cut:
        out.append(f"... {cut} more row(s) not shown")
    out.append("")
    out += summary_lines(rep)
    return "\n".join(out)


def to_markdown(rep: VerifyReport) -> str:
    lines = [f"# taper verify: {rep.model}", "", f"dtype `{rep.dtype}`, device `{rep.device}`", ""]
    lines += [f"- {x}" for x in summary_lines(rep)]
    nodes = rep.has_nodes()
    head = HEAD + (NODE_HEAD if nodes else ())
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rep.layers):
        name = f"**{r.name}**" if r.name == rep.first_divergence else f"`{r.name}`"
        lines.append("| " + " | ".join([str(i), name, "x".join(map(str, r.shape)), _g(r.max_abs), _g(r.max_rel),
                                         _g(r.mean_abs), _cos(r.cosine), f"{r.nan}/{r.inf}", _g(r.min_passing_atol),
                                         _g(r.atol), _status(rep, r)]
                                        + [c.replace("|", "\\|") for c in (_node_cells(r) if nodes else ())])
                     + " |")
    return "\n".join(lines) + "\n"


def plot_png(rep: VerifyReport) -> bytes:
    """Per-layer max abs error (log scale) with each layer's atol, failures in red, the first divergence marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(rep.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.18 * n + 4)), 4.0), dpi=100)
    xs = list(range(n))
    floor = 1e-12
    err = [min(max(r.max_abs, floor), 1e30) if math.isfinite(r.max_abs) else 1e30 for r in rep.layers]
    atol = [max(r.atol, floor) for r in rep.layers]
    ax.semilogy(xs, err, "-", color="0.6", lw=0.8, zorder=1)
    ax.scatter(xs, err, c=["tab:green" if r.passed else "tab:red" for r in rep.layers], s=14, zorder=2,
               label="max |engine - reference|")
    ax.step(xs, atol, where="mid", color="tab:blue", lw=0.8, label="atol")
    if rep.torch_errors_present():
        te = [max(r.torch_max_abs, floor) if r.torch_max_abs is not None else math.nan for r in rep.layers]
        ax.semilogy(xs, te, ":", color="tab:orange", lw=1.0, label="torch's own rounding error")
    if rep.first_divergence is not None:
        i = next(i for i, r in enumerate(rep.layers) if r.name == rep.first_divergence)
        ax.axvline(i, color="tab:red", ls="--", lw=1.0)
        ax.text(i, 0.5, f" first divergence\n {rep.first_divergence}", transform=ax.get_xaxis_transform(),
                fontsize=8, color="tab:red", ha="left" if i < 0.7 * n else "right", va="center")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("max abs error")
    ax.set_title(f"{rep.model} ({rep.dtype}, {rep.device})", fontsize=10)
    if n <= 40:
        ax.set_xticks(xs)
        ax.set_xticklabels([r.name for r in rep.layers], rotation=90, fontsize=6)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def to_html(rep: VerifyReport, plot_path=None) -> str:
    """A self-contained page; the plot is embedded as base64 unless plot_path is given (then written
    there and linked by its file name, for a page that sits beside it)."""
    png = plot_png(rep) if rep.layers else b""
    if plot_path is not None and png:
        Path(plot_path).write_bytes(png)
        img = f'<img src="{html.escape(Path(plot_path).name)}" alt="per-layer error">'
    elif png:
        img = f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="per-layer error">'
    else:
        img = "<p>no layers compared</p>"
    rows, nodes = [], rep.has_nodes()
    for i, r in enumerate(rep.layers):
        cls = "first" if r.name == rep.first_divergence else ("ok" if r.passed else "fail")
        cells = [str(i), html.escape(r.name), "x".join(map(str, r.shape)), _g(r.max_abs), _g(r.max_rel), _g(r.mean_abs),
                 _cos(r.cosine), f"{r.nan}/{r.inf}", _g(r.min_passing_atol), _g(r.atol), html.escape(_status(rep, r))]
        cells += [html.escape(c) for c in (_node_cells(r) if nodes else ())]
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    summary = "".join(f"<li>{html.escape(x)}</li>" for x in summary_lines(rep))
    title = html.escape(f"taper verify: {rep.model}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; font-family: monospace; }}
td:nth-child(2) {{ text-align: left; }}
tr.fail td {{ background: #fde2e2; }}
tr.first td {{ background: #f8b4b4; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>dtype <code>{html.escape(rep.dtype)}</code>, device <code>{html.escape(rep.device)}</code></p>
<ul>{summary}</ul>
{img}
<table><thead><tr>{''.join(f'<th>{h}</th>' for h in HEAD + (NODE_HEAD if nodes else ()))}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
</body></html>
"""
