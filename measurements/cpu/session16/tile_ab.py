"""Session 16: one Q4_1 block-dot tile (256K weights, decode: one row of x) on this CPU, as numpy_quant._dot_q4_1 ran
before (cur: the float16 scales converted every product), with the scales already float32 (pre: what QSCALES keeps),
and two other formulations not kept (gemv: the scales multiplied into the unpacked quants, then two sgemv calls;
gemv2: products and sums without BLAS). Prints each one's max error against float64 and its median time of 30
interleaved rounds. Usage: python tile_ab.py [COLS]"""
import time, numpy as np, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from engine.backends.numpy_quant import QuantKernels
from engine.quant import qtype
K = QuantKernels(); K.xp = np
q = qtype("q4_1")
rng = np.random.default_rng(0)
cols = int(sys.argv[1]) if len(sys.argv) > 1 else 576
rows = 262144 // cols
nb = cols // 32
blk = rng.integers(0, 256, (rows, nb, 20), dtype=np.uint8)
h = (rng.random((rows, nb, 2)) * 0.01).astype(np.float16)
blk[..., 0:2] = h[..., :1].view(np.uint8).reshape(rows, nb, 2); blk[..., 2:4] = h[..., 1:].view(np.uint8).reshape(rows, nb, 2)
x = rng.standard_normal((1, cols)).astype(np.float32)
xb = x.reshape(1, nb, 32); xl = K._xlay(xb, q)
d32 = K._halves(blk, 0); m32 = K._halves(blk, 2)

def cur():  # the tree as it is with QSCALES off: the tile's scales converted, then the dot
    return K._dot_q4_1(blk, xb, xl, K._block_scales(blk, q))

def pre():  # QSCALES on: the scales already float32
    return K._dot_q4_1(blk, xb, xl, (d32, m32))

xl0 = np.ascontiguousarray(xl[0, :, :, 0]).reshape(-1); xl1 = np.ascontiguousarray(xl[1, :, :, 0]).reshape(-1)
def gemv():  # m = 1: u *= d, two sgemv
    u = K._nibbles_f32(blk)  # (2, r, nb, 20)
    u *= d32[None, :, :, None]
    y = u[0].reshape(rows, -1) @ xl0 + u[1].reshape(rows, -1) @ xl1
    return (y + m32 @ xb[0].sum(-1))[None]

def gemv2():  # m = 1: per-block sums via (u * x) sum then weigh
    u = K._nibbles_f32(blk)
    s = (u[0] * xl[0, :, :, 0]).sum(-1) + (u[1] * xl[1, :, :, 0]).sum(-1)  # (r, nb)
    return ((s * d32).sum(-1) + m32 @ xb[0].sum(-1))[None]

ref = (x.astype(np.float64) @ K._dequant_rows(blk.reshape(rows, -1), q, cols).astype(np.float64).T)
fs = dict(cur=cur, pre=pre, gemv=gemv, gemv2=gemv2)
for n, f in fs.items():
    print(n, float(np.abs(f() - ref).max()))
t = {n: [] for n in fs}
for _ in range(30):
    for n, f in fs.items():
        t0 = time.perf_counter(); f(); t[n].append(time.perf_counter() - t0)
for n in fs: print(n, f"{np.median(t[n])*1e6:.1f} us")
