"""A numpy emulation of engine/backends/cuda/flash_attn.cu's flash_fwd, lane by lane (vectorised over the 32 lanes
of a warp), both variants (plain loads; pipe: double-buffered K/V and ldmatrix.trans), with mma.sync m16n8k16 and
ldmatrix built from the PTX fragment definitions rather than from the kernel's own index math. It checks the
kernel's tile bounds, masking, E padding and fragment indexing without a GPU (against a float64 reference):

    python scripts/flash_attn_emulate.py          # a few seconds

It mirrors the kernel statement by statement: change both together. The kernel's CUDA tests
(tests/test_flash_attn.py, ENGINE_DEVICE=cuda) are the real check."""
import numpy as np
import torch

FA_BM = FA_BN = 64
LOG2E = 1.4426950408889634
HEAD_DIMS = (32, 48, 64, 80, 96, 128, 160)
lane = np.arange(32)
g, t = lane >> 2, lane & 3


def mma(c, a, b):
    """c (32, 4) += A @ B with A from a[0..3] (each (32, 2)) and B from b[0..1] per the PTX layout."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for e in range(2):
        A[g, 2 * t + e] = a[0][:, e]
        A[g + 8, 2 * t + e] = a[1][:, e]
        A[g, 2 * t + 8 + e] = a[2][:, e]
        A[g + 8, 2 * t + 8 + e] = a[3][:, e]
        B[2 * t + e, g] = b[0][:, e]
        B[2 * t + 8 + e, g] = b[1][:, e]
    assert not np.isnan(A).any() and not np.isnan(B).any()
    C = A.astype(np.float32) @ B.astype(np.float32)
    for e in range(2):
        c[:, e] += C[g, 2 * t + e]
        c[:, 2 + e] += C[g + 8, 2 * t + e]


def ldmatrix_trans(smem, addr):
    """ldmatrix.m8n8.x4.trans: lanes 8i..8i+7 address the 8 rows (8 contiguous values) of matrix i; lane
    (g, t) receives M_i[2t][g], M_i[2t+1][g] in register i. Returns 4 arrays (32, 2)."""
    assert (addr % 8 == 0).all()  # 16-byte aligned rows
    out = []
    for i in range(4):
        M = np.stack([smem[addr[8 * i + r]: addr[8 * i + r] + 8] for r in range(8)]).astype(np.float32)
        out.append(np.stack([M[2 * t, g], M[2 * t + 1, g]], 1))
    return out


def stage(dst, src_flat, off, rs, nrows, E, EP):
    """fa_stage: dst flat (64 * LD); chunks of 8."""
    LD, CH = EP + 8, EP // 8
    for c in range(FA_BM * CH):  # every thread's chunks together
        r, col = c // CH, (c % CH) * 8
        if r < nrows and col < E:
            base = off + r * rs + col
            val = src_flat[base:base + 8]
            assert len(val) == 8
        else:
            val = np.zeros(8, np.float16)
        dst[r * LD + col: r * LD + col + 8] = val


def flash_fwd(qf, qb, qh, ql, kf, kb, kh, ks, vf, vb, vh, vs, mask, kind, mb, mh, ml, ms, out, Hq, rep, L, S, E, scale,
              causal, dt, pipe=False):
    EP = next(ep for ep in HEAD_DIMS if ep >= E)
    LD, NT, KT = EP + 8, EP // 8, EP // 16
    rnd = lambda x: np.asarray(x, np.float32).astype(dt).astype(np.float32)  # noqa: E731
    B = out.shape[0]
    for b in range(B):
        for h in range(Hq):
            for bx in range(-(-L // FA_BM)):
                m0 = bx * FA_BM
                hk = h // rep
                Qs = np.full(FA_BM * LD, np.nan, np.float16)
                Ks = np.full(FA_BN * LD, np.nan, np.float16)
                Vs = np.full(FA_BN * LD, np.nan, np.float16)
                stage(Qs, qf, b * qb + h * qh + m0 * ql, ql, min(FA_BM, L - m0), E, EP)
                n_end = min(S, m0 + FA_BM) if causal else S
                warps = []
                for warp in range(4):
                    warps.append(dict(o=np.zeros((NT, 32, 4), np.float32), m=np.full((2, 32), -np.inf, np.float32),
                                      l=np.zeros((2, 32), np.float32)))
                n_tiles = -(-n_end // FA_BN)
                bufK = [np.full(FA_BN * LD, np.nan, np.float16) for _ in range(2)]
                bufV = [np.full(FA_BN * LD, np.nan, np.float16) for _ in range(2)]
                if pipe:
                    stage(bufK[0], kf, b * kb + hk * kh, ks, min(FA_BN, S), E, EP)
                    stage(bufV[0], vf, b * vb + hk * vh, vs, min(FA_BN, S), E, EP)
                for it in range(n_tiles):
                    n0 = it * FA_BN
                    if pipe:
                        if it + 1 < n_tiles:
                            n1, nb = n0 + FA_BN, (it + 1) % 2
                            stage(bufK[nb], kf, b * kb + hk * kh + n1 * ks, ks, min(FA_BN, S - n1), E, EP)
                            stage(bufV[nb], vf, b * vb + hk * vh + n1 * vs, vs, min(FA_BN, S - n1), E, EP)
                        Ks, Vs = bufK[it % 2], bufV[it % 2]
                    else:
                        stage(Ks, kf, b * kb + hk * kh + n0 * ks, ks, min(FA_BN, S - n0), E, EP)
                        stage(Vs, vf, b * vb + hk * vh + n0 * vs, vs, min(FA_BN, S - n0), E, EP)
                    for warp in range(4):
                        W = warps[warp]
                        w0 = m0 + warp * 16
                        row = [w0 + g, w0 + g + 8]
                        if not w0 < L or (causal and n0 > w0 + 15):
                            continue
                        s = np.zeros((8, 32, 4), np.float32)
                        for kk in range(KT):
                            qa = (warp * 16 + g) * LD + kk * 16 + 2 * t
                            ld = lambda arr, i: np.stack([arr[i], arr[i + 1]], 1).astype(np.float32)  # noqa: E731
                            a = [ld(Qs, qa), ld(Qs, qa + 8 * LD), ld(Qs, qa + 8), ld(Qs, qa + 8 * LD + 8)]
                            for j in range(8):
                                kb_ = (j * 8 + g) * LD + kk * 16 + 2 * t
                                mma(s[j], a, [ld(Ks, kb_), ld(Ks, kb_ + 8)])
                        for j in range(8):
                            for e in range(4):
                                i = row[e >> 1]
                                col = n0 + j * 8 + 2 * t + (e & 1)
                                x = s[j][:, e] * np.float32(scale)
                                keep = (col < S) & ((not causal) | (col <= i))
                                if kind:
                                    sel = keep & (i < L)
                                    mi = b * mb + h * mh + i * ml + col * ms
                                    mv = np.zeros(32, np.float32)
                                    mv[sel] = mask[mi[sel]]
                                    if kind == 1:
                                        keep = np.where(sel, mv != 0, keep)
                                    else:
                                        x = np.where(sel, x + mv, x)
                                s[j][:, e] = np.where(keep, x, -np.inf)
                        for r in range(2):
                            mx = np.max(np.maximum(s[:, :, 2 * r], s[:, :, 2 * r + 1]), 0)
                            mx = np.maximum(mx, mx[lane ^ 1])
                            mx = np.maximum(mx, mx[lane ^ 2])
                            mnew = np.maximum(W["m"][r], mx)
                            base = np.where(mnew == -np.inf, 0, mnew).astype(np.float32)
                            with np.errstate(invalid="ignore"):
                                alpha = np.exp2((W["m"][r] - base) * np.float32(LOG2E)).astype(np.float32)
                            W["m"][r] = mnew
                            W["l"][r] *= alpha
                            W["o"][:, :, 2 * r] *= alpha
                            W["o"][:, :, 2 * r + 1] *= alpha
                            for j in range(8):
                                for e in range(2):
                                    p = np.exp2((s[j][:, 2 * r + e] - base) * np.float32(LOG2E)).astype(np.float32)
                                    s[j][:, 2 * r + e] = p
                                    W["l"][r] += p
                        for kk in range(4):
                            pk = lambda lo, hi: np.stack([rnd(lo), rnd(hi)], 1)  # noqa: E731
                            lo_t, hi_t = s[2 * kk], s[2 * kk + 1]
                            a = [pk(lo_t[:, 0], lo_t[:, 1]), pk(lo_t[:, 2], lo_t[:, 3]), pk(hi_t[:, 0], hi_t[:, 1]),
                                 pk(hi_t[:, 2], hi_t[:, 3])]
                            if pipe:
                                mi = lane >> 3
                                key = kk * 16 + (mi & 1) * 8 + (lane & 7)
                                for np_ in range(NT // 2):
                                    addr = key * LD + (2 * np_ + (mi >> 1)) * 8
                                    regs = ldmatrix_trans(Vs, addr)
                                    mma(W["o"][2 * np_], a, [regs[0], regs[1]])
                                    mma(W["o"][2 * np_ + 1], a, [regs[2], regs[3]])
                            else:
                                for n in range(NT):
                                    at = (kk * 16 + 2 * t) * LD + n * 8 + g
                                    b0 = np.stack([Vs[at], Vs[at + LD]], 1).astype(np.float32)
                                    b1 = np.stack([Vs[at + 8 * LD], Vs[at + 9 * LD]], 1).astype(np.float32)
                                    mma(W["o"][n], a, [b0, b1])
                for warp in range(4):
                    W = warps[warp]
                    w0 = m0 + warp * 16
                    row = [w0 + g, w0 + g + 8]
                    for r in range(2):
                        lsum = W["l"][r].copy()
                        lsum = lsum + lsum[lane ^ 1]
                        lsum = lsum + lsum[lane ^ 2]
                        inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
                        for ln in range(32):
                            if row[r][ln] < L:
                                for n in range(NT):
                                    col = n * 8 + 2 * t[ln]
                                    if col < E:
                                        out[b, h, row[r][ln], col] = W["o"][n][ln, 2 * r] * inv[ln]
                                        out[b, h, row[r][ln], col + 1] = W["o"][n][ln, 2 * r + 1] * inv[ln]


def as4(a):
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def run(q, k, v, mask=None, causal=False, scale=None, pipe=False):
    """q/k/v numpy float16 views (any strides, unit last); mask numpy bool/float16/float32."""
    q4, k4, v4 = as4(q), as4(k), as4(v)
    B, Hq, L, E = q4.shape
    Hkv, S = k4.shape[1], k4.shape[2]
    st = lambda a: [0 if n == 1 else s // a.itemsize for n, s in zip(a.shape, a.strides)]  # noqa: E731

    def flat(a):  # the flat buffer under a view and the view's offset in elements
        base = a
        while base.base is not None:
            base = base.base
        off = (a.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // a.itemsize
        return base.reshape(-1).view(a.dtype), off
    (qf, qo), (kf, ko), (vf, vo) = flat(q4), flat(k4), flat(v4)
    out = np.full((B, Hq, L, E), np.nan, np.float32)
    kind, ms, mf = 0, [0] * 4, None
    if mask is not None:
        m4 = as4(mask)
        kind = 1 if mask.dtype == np.bool_ else 3
        mf, mo = flat(m4)
        assert mo == 0
        mf = mf.astype(np.float32)
        ms = st(m4)
    scale = 1 / np.sqrt(E) if scale is None else scale
    # offsets folded into flat arrays
    flash_fwd(qf[qo:], *st(q4)[:3], kf[ko:], *st(k4)[:3], vf[vo:], *st(v4)[:3], mf, kind, *ms, out, Hq, Hq // Hkv, L, S,
              E, scale, causal, np.float16, pipe)
    return out.reshape(q.shape[:-1] + (E,))


def ref(q, k, v, mask=None, causal=False):
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in (q, k, v))
    rep = tq.shape[-3] // tk.shape[-3] if tq.ndim >= 3 else 1
    tk, tv = tk.repeat_interleave(rep, -3), tv.repeat_interleave(rep, -3)
    s = tq @ tk.transpose(-1, -2) / np.sqrt(q.shape[-1])
    L, S = s.shape[-2:]
    if causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -np.inf)
    if mask is not None:
        tm = torch.from_numpy(mask)
        s = s.masked_fill(~tm, -np.inf) if tm.dtype == torch.bool else s + tm.double()
    p = torch.softmax(s, -1).nan_to_num(0)
    return (p @ tv).numpy()


def check(name, q, k, v, mask=None, causal=False):
    for pipe in (False, True):
        check1(name + (" pipe" if pipe else ""), q, k, v, mask, causal, pipe)


def check1(name, q, k, v, mask, causal, pipe):
    got = run(q, k, v, mask, causal, pipe=pipe)
    want = ref(q, k, v, mask, causal)
    err = np.abs(got - want).max()
    assert not np.isnan(got).any(), name
    print(f"{name:40s} max abs err {err:.2e}")
    assert err < 5e-3, name


if __name__ == "__main__":
    R = np.random.default_rng(0)
    h16 = lambda *s: R.standard_normal(s).astype(np.float16)  # noqa: E731
    check("E8 L5 S6 causal (E padded to 32)", h16(2, 4, 5, 8), h16(2, 4, 6, 8), h16(2, 4, 6, 8), causal=True)
    check("E64 L200 S300: 3 key tiles", h16(1, 1, 200, 64), h16(1, 1, 300, 64), h16(1, 1, 300, 64))
    check("E40 L70 S70", h16(1, 2, 70, 40), h16(1, 2, 70, 40), h16(1, 2, 70, 40))
    check("E40 causal L70 S70", h16(1, 1, 70, 40), h16(1, 1, 70, 40), h16(1, 1, 70, 40), causal=True)
    check("E32 causal L130 S70 (L>S)", h16(1, 1, 130, 32), h16(1, 1, 70, 32), h16(1, 1, 70, 32), causal=True)
    check("E80 causal L20 S150 (L<S)", h16(1, 1, 20, 80), h16(1, 1, 150, 80), h16(1, 1, 150, 80), causal=True)
    check("E160 L1 S77", h16(2, 1, 1, 160), h16(2, 1, 77, 160), h16(2, 1, 77, 160))
    check("E64 GQA 4/2 L65", h16(1, 4, 65, 64), h16(1, 2, 65, 64), h16(1, 2, 65, 64))
    # transposed views (BERT style): (B, L, H, E) -> (B, H, L, E)
    x = h16(2, 77, 3 * 2 * 32)
    qv = x[..., :64].reshape(2, 77, 2, 32).transpose(0, 2, 1, 3)
    kv = x[..., 64:128].reshape(2, 77, 2, 32).transpose(0, 2, 1, 3)
    vv = x[..., 128:].reshape(2, 77, 2, 32).transpose(0, 2, 1, 3)
    check("E32 transposed views", qv, kv, vv)
    bm = R.random((2, 1, 1, 77)) > 0.3
    bm[1, 0, 0, :] = False  # a fully masked batch element
    check("bool padding mask, one batch all masked", qv, kv, vv, mask=bm)
    am = (R.standard_normal((1, 1, 77, 77)) * 2).astype(np.float32)
    am[0, 0, 5, :] = -np.inf
    check("additive float mask broadcast, -inf row", qv, kv, vv, mask=am)
    check("E128 L3 S3 3-d", h16(2, 3, 128), h16(2, 3, 128), h16(2, 3, 128))
    print("emulation matches the float64 reference")
