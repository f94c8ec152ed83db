"""`taper demo`: the main job on built-in defaults, needing no model files.

1. Op parity: build tensors on every available device; each row runs one op on seeded random
   inputs in the engine and in torch (float64 reference) and reports the engine's max error next to
   the tolerance of its dtype.
2. Port and verify: a tiny Llama built by transformers from a config (random weights) is saved as
   safetensors, loaded by the engine and verified layer by layer (`taper verify`'s report).
"""
from __future__ import annotations

import sys
import time

import numpy as np


def add_arguments(parser):
    parser.add_argument("--devices", default=None, help="comma list (default: every available device)")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip the tiny-Llama port and verify step")


def _cases(E, F, tF):
    """(name, input shapes, engine fn, torch fn, tolerance scale)"""
    return [
        ("add (broadcast)", [(64, 128), (128,)], lambda a, b: a + b, lambda a, b: a + b, 1),
        ("matmul", [(64, 128), (128, 96)], lambda a, b: a @ b, lambda a, b: a @ b, 8),
        ("softmax", [(32, 256)], lambda a: F.softmax(a, -1), lambda a: tF.softmax(a, -1), 2),
        ("layer_norm", [(32, 256)], lambda a: F.layer_norm(a, (256,)), lambda a: tF.layer_norm(a, (256,)), 4),
        ("rms_norm", [(32, 256)], lambda a: F.rms_norm(a, (256,), eps=1e-6),
         lambda a: tF.rms_norm(a, (256,), eps=1e-6), 4),
        ("gelu", [(64, 256)], lambda a: F.gelu(a), lambda a: tF.gelu(a), 2),
        ("silu", [(64, 256)], lambda a: F.silu(a), lambda a: tF.silu(a), 2),
        ("conv2d 3x3", [(2, 8, 16, 16), (16, 8, 3, 3)], lambda a, w: F.conv2d(a, w, padding=1),
         lambda a, w: tF.conv2d(a, w, padding=1), 8),
        ("sdpa causal GQA", [(1, 8, 16, 32), (1, 2, 16, 32), (1, 2, 16, 32)],
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
         lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), 4),
        ("sum(dim=-1)", [(64, 256)], lambda a: a.sum(-1), lambda a: a.sum(-1), 8),
    ]


FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _check_args(devices, dtypes) -> str | None:
    """Why --devices or --dtypes cannot run here (None when they can)."""
    from engine import device as D
    for d in devices:
        try:
            D.parse(d)
        except ValueError as e:
            return f"--devices {d}: {e}"
        if not D.is_available(d):
            cause = getattr(D.backend(d), 'cause', None)
            return (f"--devices {d}: not available here ({type(cause).__name__}: {cause}); available: "
                    f"{', '.join(str(x) for x in D.available_devices())}")
    bad = [t for t in dtypes if t not in FLOAT_DTYPES]
    if bad:
        return f"--dtypes {','.join(bad)}: the demo compares floating-point ops; choose from {', '.join(FLOAT_DTYPES)}"
    return None


def run(args) -> int:
    import engine as E
    import engine.functional as F
    from migration import tolerances

    try:
        import torch
        import torch.nn.functional as tF
    except ImportError:
        print("taper demo: torch is not installed; install the test extra (pip install -e '.[test]')")
        return 2
    devices = args.devices.split(",") if args.devices else [str(d) for d in E.available_devices()]
    dtypes = args.dtypes.split(",")
    why = _check_args(devices, dtypes)
    if why:
        print(f"taper demo: {why}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    print(f"engine parity against torch {torch.__version__} (float64 reference), devices: {', '.join(devices)}")
    header = f"{'device':8} {'dtype':9} {'op':18} {'max abs err':>12} {'tolerance':>12} {'ms':>8}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for dev in devices:
        for dt in dtypes:
            rtol, atol = tolerances.get(dt)
            for name, shapes, efn, tfn, scale in _cases(E, F, tF):
                xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
                ins = [E.tensor(x, device=dev).to(dt) for x in xs]
                # reference: the same rounded inputs, in float64 through torch
                ref_in = [torch.from_numpy(t.float().numpy().astype(np.float64)) for t in ins]
                ref = tfn(*ref_in).numpy()
                t0 = time.perf_counter()
                out = efn(*ins)
                E.synchronize(dev)
                ms = (time.perf_counter() - t0) * 1e3
                got = out.float().numpy().astype(np.float64)
                err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
                tol = atol * scale + rtol * scale * float(np.max(np.abs(ref)))
                # 16-bit outputs are judged by the dtype's own rounding of the reference
                ok = bool(err <= tol) or _within_rounding(got, ref, dt, scale)
                failures += not ok
                print(f"{dev:8} {dt:9} {name:18} {err:12.3e} {tol:12.3e} {ms:8.2f}  {'ok' if ok else 'FAIL'}")
    print(f"\n{'all rows pass' if not failures else f'{failures} rows FAIL'}; pool stats: "
          + ", ".join(f"{d}: peak {E.memory_stats(d)['peak_bytes']:,} B, hits {E.memory_stats(d)['hits']}"
                      for d in devices))
    if not args.no_verify:
        failures += _verify_tiny_llama(args.seed)
    return 1 if failures else 0


def _verify_tiny_llama(seed: int) -> int:
    """Port a tiny random Llama from transformers and verify it; returns 1 on a numerical failure."""
    import tempfile

    import torch
    import transformers

    from migration.verify import verify_hf
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        print(f"\nport + verify: tiny Llama (transformers {transformers.__version__}, random weights) from {d}")
        report = verify_hf(d, dtype="float32", batch=1, seq_len=16, seed=seed, workdir=d)
        print(report.table(max_rows=12))
    return 0 if report.passed else 1


def _within_rounding(got, ref, dt, scale) -> bool:
    eps = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}.get(dt)
    if eps is None:
        return False
    return bool(np.all(np.abs(got - ref) <= scale * eps * (np.abs(ref) + 1e-2)))
