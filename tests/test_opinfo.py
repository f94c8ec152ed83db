"""The engine against torch's own OpInfo database (torch.testing._internal.common_methods_invocations.op_db),
an oracle the engine's authors did not write.

Every OpInfo that maps to an engine op (by name: see tests/opinfo_support.py) runs for every engine
dtype the OpInfo supports on the CPU: its sample inputs go to torch (CPU) and to the engine (the
device under test, ENGINE_DEVICE), and the results are compared with the one tolerance table
(migration/tolerances.py; 16-bit floats judged against a float64 torch run, DESIGN.md). A row fails
on any mismatch, on any engine error, and on any refusal not listed in REFUSED.

Runtime: at most LIMIT samples per (op, dtype), a seeded choice when an OpInfo has more (different
dtypes draw different subsets), so the module stays within a few minutes on 2 cores.

    python tests/test_opinfo.py            # per-dtype counts of pass / mismatch / error / refused / n/a
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import DEVICE, needs_device, tname  # noqa: E402
from opinfo_support import engine_dtypes, engine_op, op_id, run_op  # noqa: E402
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

pytestmark = needs_device
LIMIT = 24

# Tolerance scale (times the table's rtol and atol) for ops that accumulate: their sums run in another
# order than torch's (numpy's or cuBLAS's GEMM, im2col convolutions); same convention as test_ops_nn's ACC.
ACC = 8
SCALE = {name: ACC for name in (
    "matmul", "mm", "bmm", "mv", "dot", "addmm", "addmv", "addbmm", "baddbmm", "addr", "einsum", "tensordot",
    "nn.functional.linear", "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv3d",
    "nn.functional.conv_transpose1d", "nn.functional.conv_transpose2d", "nn.functional.conv_transpose3d",
    "nn.functional.scaled_dot_product_attention", "nn.functional.cdist", "nn.functional.cosine_similarity",
    "nn.functional.layer_norm", "nn.functional.group_norm", "nn.functional.instance_norm",
    "nn.functional.batch_norm", "nn.functional.local_response_norm", "nn.functional.rms_norm")}
SCALE["nn.functional.conv_transpose3d"] = 2 * ACC  # 27 taps x channels per output: seen 4.7e-5 relative in float32

# Arguments the engine refuses, and why: only training-only features (a random mask, gradients). A refusal
# is a NotImplementedError whose message names the argument; any other refusal fails its row.
#   OpInfo id -> (text the error must contain, reason)
REFUSED = {
    "nn.functional.dropout": ("training=True", "dropout in training draws a random mask; inference is the identity"),
    "nn.functional.dropout2d": ("training=True", "as dropout"),
    "nn.functional.dropout3d": ("training=True", "as dropout"),
    "nn.functional.alpha_dropout": ("training=True", "as dropout"),
    "nn.functional.feature_alpha_dropout": ("training=True", "as dropout"),
    "nn.functional.scaled_dot_product_attention": ("dropout_p=", "attention dropout is a random mask (training)"),
}


def _refusal_ok(op, message: str) -> bool:
    allowed = REFUSED.get(op.name)
    return allowed is not None and allowed[0] in message


OPS = [op for op in op_db if engine_op(op) is not None]
CASES = [pytest.param(op, dt, id=f"{op_id(op)}-{tname(dt)}") for op in OPS for dt in engine_dtypes(op)]


@pytest.mark.parametrize("op,dtype", CASES)
def test_opinfo(op, dtype):
    counts, details = run_op(op, dtype, LIMIT, SCALE.get(op.name, 1))
    bad = [d for d in details if d[0] in ("mismatch", "error") or (d[0] == "refused" and not _refusal_ok(op, d[1]))]
    assert not bad, (f"{op_id(op)} [{tname(dtype)}] on {DEVICE}: {len(bad)} of {sum(counts.values())} samples failed\n"
                     + "\n".join(f"  {cls}: {detail}\n    sample {sample}" for cls, detail, sample in bad[:5]))
    assert counts["pass"] + counts["refused"] + counts["n/a"] == sum(counts.values())


def test_opinfo_covers_the_engine():
    """The OpInfo rows reach the ops this module exists for (a typo in the name mapping would silently
    drop them)."""
    names = {op.name for op in OPS}
    for expected in ("einsum", "nn.functional.conv3d", "nn.functional.interpolate", "scatter_reduce", "unique",
                     "searchsorted", "nn.functional.cross_entropy", "new_full", "erfinv", "bitwise_left_shift"):
        assert expected in names, f"no OpInfo maps to the engine's {expected}"
    assert len(OPS) >= 250


def main():
    """Per-dtype counts over every mapped OpInfo (the figures of the conformance report)."""
    from collections import Counter, defaultdict
    per, refused = defaultdict(Counter), Counter()
    for op in OPS:
        for dt in engine_dtypes(op):
            counts, details = run_op(op, dt, LIMIT, SCALE.get(op.name, 1))
            per[tname(dt)] += counts
            for cls, detail, _ in details:
                if cls != "n/a":
                    print(f"{op_id(op)} [{tname(dt)}] {cls}: {detail[:160]}")
                if cls == "refused":
                    refused[op_id(op)] += 1
    classes = ("pass", "mismatch", "error", "refused", "n/a")
    print(f"\n{len(OPS)} OpInfos on {DEVICE}, at most {LIMIT} samples per (op, dtype)")
    print(f"{'dtype':10s}" + "".join(f"{c:>10s}" for c in classes))
    for dt, c in per.items():
        print(f"{dt:10s}" + "".join(f"{c[k]:10d}" for k in classes))
    for name, n in sorted(refused.items()):
        print(f"refused: {name} ({n} samples)")


if __name__ == "__main__":
    main()
