"""Session 15: session 14's decode_variants.py (the captured decode under qgemv_direct variants, int8 route,
Llama-2-7B shape), imported, with two more kinds of variant: rK=V sets the int8 route's own default K (cupy_quant
_DIRECT_ROUTE, e.g. rb=4: four blocks' warps an SM where a launch's pairs take more than one wave), oK=V Q8_0's own
(_DIRECT_OWN), so the one-wave settings still apply where they do.
Usage: python decode_variants.py OUT.json FORMATS VARIANT [VARIANT ...]
"""
import copy
import importlib.util
import sys
from pathlib import Path

from engine.backends import cupy_quant as Q

_spec = importlib.util.spec_from_file_location("decode_variants14", Path(__file__).parents[1] / "session14" / "decode_variants.py")
s14 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(s14)
ROUTE, OWN = copy.deepcopy(Q._DIRECT_ROUTE), copy.deepcopy(Q._DIRECT_OWN)
_set14 = s14.set_variant


def set_variant(v):
    Q._DIRECT_ROUTE.clear(), Q._DIRECT_ROUTE.update(copy.deepcopy(ROUTE))
    Q._DIRECT_OWN.clear(), Q._DIRECT_OWN.update(copy.deepcopy(OWN))
    rest = []
    for part in v.split("+"):
        if part[:1] in "ro" and "=" in part and len(part.split("=")[0]) == 2:
            k, val = part.split("=")
            (Q._DIRECT_ROUTE["int8"] if k[0] == "r" else Q._DIRECT_OWN["q8_0"])[k[1]] = int(val)
        else:
            rest.append(part)
    _set14("+".join(rest) or "base")


s14.set_variant = set_variant
if __name__ == "__main__":
    s14.main(sys.argv[1], sys.argv[2], sys.argv[3:])
