"""`taper impls`: the implementations that verify compares and the suites measure (impls/), with their
availability on this machine and, when one cannot run, the reason.

    taper impls                 # every implementation on cpu and cuda
    taper impls --device cpu --json
"""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--device", action="append", choices=["cpu", "cuda"], help="only these devices")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args) -> int:
    import impls
    rows = impls.availability(devices=args.device or impls.DEVICES, dtype=args.dtype)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    width = max(len(r["impl"]) for r in rows)
    print(f"{'implementation':{max(width, 14)}}  kind         device  available  detail")
    for r in rows:
        print(f"{r['impl']:{max(width, 14)}}  {r['kind']:11}  {r['device']:6}  {'yes' if r['available'] else 'no':9}  "
              f"{r['detail']}")
    return 0
