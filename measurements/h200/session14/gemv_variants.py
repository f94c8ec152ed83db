"""Session 14: qgemv_direct per shape at the decode's fused shapes (Llama-2-7B: q/k/v as one launch of three
segments, o_proj, gate/up as one GLU launch, down_proj, the LM head), int8 route, Q4_K and Q8_0, graph-timed, under
cupy_quant.DIRECT settings (e.g. x=0: x staged in shared memory, then quantised; base: the defaults): session 13's
script (measurements/h200/session13/gemv_variants.py) with settings only, its source edits no longer matching.
Usage: python gemv_variants.py OUT.json [variant ...]
"""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("gemv_variants13", Path(__file__).parents[1] / "session13" / "gemv_variants.py")
session13 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(session13)

if __name__ == "__main__":
    session13.main(sys.argv[1], sys.argv[2:] or ["base", "x=0"])
