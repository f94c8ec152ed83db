"""Golden outputs: the reference captures of a verify run saved with its inputs and metadata
(`verify(..., save_golden=DIR)`), and `verify_golden(engine_model, DIR)`, which compares an engine
model with them later without importing torch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from engine.io.atomic import atomic_write_text
from migration.capture import VerifyError, scratch
from migration.report import VerifyReport
from migration.verify import Tolerance, _engine_dtype, _engine_side, parse_overrides

GOLDEN_VERSION = 1


def save_golden(directory, meta: dict, ref_path, noise_path, inputs) -> None:
    from engine.io.safetensors import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ref_path, d / "reference.safetensors")
    if noise_path:
        shutil.copyfile(noise_path, d / "torch_noise.safetensors")
    save_file({f"input_{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs)}, d / "inputs.safetensors")
    # written last: a directory with meta.json is complete
    atomic_write_text(d / "meta.json", json.dumps({**meta, "version": GOLDEN_VERSION}, indent=1))


def load_golden(directory) -> tuple[dict, list]:
    from engine.io.safetensors import load_file
    d = Path(directory)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except OSError as e:
        raise VerifyError(f"{d}: not a golden directory (meta.json: {e.strerror})") from None
    if meta.get("version") != GOLDEN_VERSION:
        raise VerifyError(f"{d}: golden format version {meta.get('version')} (this taper reads {GOLDEN_VERSION})")
    arrays = load_file(d / "inputs.safetensors")
    inputs = [np.array(arrays[f"input_{i}"]) for i in range(len(arrays))]
    return meta, inputs


def verify_golden(engine_model, golden_dir, *, device=None, tol=None, tol_scale: float = 1.0, confirm: bool = True,
                  engine_kwargs: dict | None = None, workdir=None) -> VerifyReport:
    """Compare an engine model with reference outputs saved by verify(save_golden=DIR). Needs no torch."""
    import engine
    meta, inputs = load_golden(golden_dir)
    dtype = meta["dtype"]
    device = str(engine.device.parse(device)) if device is not None else str(engine.default_device())
    if not isinstance(tol, Tolerance):  # the golden's own overrides first, then the caller's
        saved = meta.get("tolerance", {})
        scale = tol_scale if tol_scale != 1.0 else saved.get("scale", 1.0)
        tol = Tolerance(dtype, parse_overrides(saved.get("overrides", [])) + parse_overrides(tol), scale)
    if _engine_dtype(engine_model) not in (None, dtype):
        engine_model.to(dtype=engine.dtype.get(dtype))
    e_names = {qn for qn, _ in engine_model.named_modules()}
    emap = {qn: base for qn, base in meta["base"].items() if qn in e_names}
    unmatched = {"golden_only": sorted(qn for qn in meta["base"] if qn not in e_names)}
    d = Path(golden_dir)
    noise = d / "torch_noise.safetensors"
    with scratch(workdir) as wd:
        ek = {**meta.get("engine_kwargs", {}), **(engine_kwargs or {})}  # saved ones (bandwidth), then the caller's
        rep = _engine_side(engine_model, inputs, ek, emap, meta, d / "reference.safetensors",
                           noise if noise.exists() else None, tol, device, confirm, wd, unmatched)
        rep.reference = f"golden {d} ({meta['reference']})"
        return rep
