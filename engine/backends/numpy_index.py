"""Indexing, scanning and set kernels of the numpy backend (a mixin of NumpyBackend; cupy inherits it).

Each kernel returns new pooled arrays; the tensor layer has validated shapes, dtypes and bounds.
Loops run over one dim (cummax, logcumsumexp) or over rows (searchsorted), never over elements, and
use `self.xp` only, so they run on cupy arrays as well.
"""
from __future__ import annotations

import numpy as np

from engine import dtype as D


class IndexKernels:
    def _grid(self, index, dim: int):
        """Open-grid indices with `index` at `dim` (like np.indices(sparse=True), which cupy lacks)."""
        nd = index.ndim
        idx = [self.xp.arange(n).reshape((1,) * d + (n,) + (1,) * (nd - d - 1)) for d, n in enumerate(index.shape)]
        idx[dim] = index
        return tuple(idx)

    def _at(self, op: str, out, key, src) -> None:
        """out[key] op= src in place, repeated places applying every element (numpy's ufunc.at). cupy
        has add.at, maximum.at and minimum.at for some dtypes only, and no multiply.at: there the
        elements go in rounds, the k-th element landing on each place in round k, so no round writes
        a place twice."""
        ufunc = getattr(self.xp, op)
        try:
            ufunc.at(out, key, src)
            return
        except (TypeError, NotImplementedError):  # cupy: this dtype or op has no .at
            self._at_rounds(op, out, key, src)

    def _at_rounds(self, op: str, out, key, src) -> None:
        """_at without ufunc.at, in rounds (any array library, any dtype)."""
        xp, ufunc = self.xp, getattr(self.xp, op)
        places = xp.arange(out.size).reshape(out.shape)[key]  # the flat place of every element
        flat = places.reshape(-1)
        src = xp.broadcast_to(xp.asarray(src, dtype=out.dtype), places.shape).reshape(-1)
        order = xp.argsort(flat, kind="stable")
        sf = flat[order]
        first = xp.ones(sf.shape, bool)
        first[1:] = sf[1:] != sf[:-1]
        pos = xp.arange(sf.size)
        rank = pos - pos[first][xp.cumsum(first) - 1]  # k for the k-th element landing on its place
        o = out.reshape(-1)  # out is a fresh contiguous copy: a view
        wide = out.dtype == np.bool_ or D.get(out.dtype).is_reduced
        for k in range(int(rank.max()) + 1 if rank.size else 0):  # one host read: eager indexing ops only
            sel = order[rank == k]
            at, v = flat[sel], src[sel]
            if wide:  # bool: add is or, multiply is and; 16-bit floats: one rounding per element
                r = ufunc(o[at].astype(np.float32), v.astype(np.float32))
                o[at] = (r != 0) if out.dtype == np.bool_ else r.astype(out.dtype)
            else:
                o[at] = ufunc(o[at], v)

    def index_put(self, x, key: tuple, values, accumulate: bool):
        """A copy of x with x[key] = values, or x[key] += values (repeated indices add up)."""
        cd = D.compute_dtype(D.get(x.dtype))
        out = self._c(x, cd).copy()
        values = self._c(values, cd)
        if accumulate:
            self._at("add", out, key, values)
        else:
            out[key] = values
        return self._out(out, D.get(x.dtype))

    _IDENTITY = {"sum": 0, "mean": 0, "prod": 1}

    def scatter_reduce(self, x, dim: int, index, src, reduce: str, include_self: bool):
        """torch.scatter_reduce: reduce 'sum' | 'prod' | 'mean' | 'amax' | 'amin' of src into x along dim."""
        xp = self.xp
        dt = D.get(x.dtype)
        out = self._c(x, D.compute_dtype(dt)).copy()
        src = self._c(src, out.dtype)[tuple(slice(0, n) for n in index.shape)]
        key = self._grid(index, dim)
        if reduce in ("amax", "amin"):
            if not include_self:  # start from the identity of max / min where src lands
                if out.dtype.kind == "f":
                    out[key] = -np.inf if reduce == "amax" else np.inf
                else:
                    info = np.iinfo(out.dtype) if out.dtype != np.bool_ else None
                    out[key] = (info.min if reduce == "amax" else info.max) if info else reduce == "amin"
            self._at("maximum" if reduce == "amax" else "minimum", out, key, src)
            return self._out(out, dt)
        if not include_self:
            out[key] = self._IDENTITY[reduce]
        if reduce == "prod":
            self._at("multiply", out, key, src)
            return self._out(out, dt)
        self._at("add", out, key, src)
        if reduce == "mean":
            count = xp.ones(out.shape, np.int64)
            if not include_self:
                count[key] = 0
            self._at("add", count, key, 1)
            count = xp.maximum(count, 1)
            out = out // count if out.dtype.kind in "iub" else out / count.astype(out.dtype)
        return self._out(out, dt)

    def unique(self, x, dim, return_inverse: bool, return_counts: bool):
        """Sorted unique values (over the flattened input, or slices along dim), inverse and counts."""
        xp = self.xp
        # sorted on a key every array library sorts (cupy sorts neither bfloat16 nor, here, bool): the
        # key keeps the order and the equalities (16-bit floats widen exactly, bools become 0/1)
        key = x.astype(np.uint8) if x.dtype == np.bool_ else self._c(x)
        r = xp.unique(key if dim is not None else key.reshape(-1), return_inverse=True, return_counts=True, axis=dim)
        vals, inv, cnt = r[0], r[1], r[2]
        inv = inv.reshape(x.shape if dim is None else (x.shape[dim],))
        return self._out(vals, D.get(x.dtype)), self._out(inv, D.int64), self._out(cnt, D.int64)

    def searchsorted(self, seq, values, right: bool, out_dtype):
        """Row-wise searchsorted: seq (..., n) sorted along the last dim, values (..., m) with the same
        leading dims (or seq 1-d for any values)."""
        xp = self.xp
        side = "right" if right else "left"
        seq, values = self._c(seq), self._c(values)
        if values.size == 0 or seq.shape[-1] == 0:
            return self._out(xp.zeros(values.shape, np.int64), out_dtype)
        if seq.ndim == 1:
            return self._out(xp.searchsorted(seq, values, side=side), out_dtype)
        rows_s, rows_v = seq.reshape(-1, seq.shape[-1]), values.reshape(-1, values.shape[-1])
        out = xp.empty(rows_v.shape, np.int64)
        for i in range(rows_s.shape[0]):
            out[i] = xp.searchsorted(rows_s[i], rows_v[i], side=side)
        return self._out(out.reshape(values.shape), out_dtype)

    def bincount(self, x, weights, minlength: int, out_dtype):
        w = None if weights is None else self._c(weights, np.float64)
        return self._out(self.xp.bincount(x.reshape(-1), weights=w, minlength=minlength), out_dtype)

    def cum_extreme(self, x, dim: int, largest: bool):
        """cummax / cummin along dim: (values, int64 indices); on ties the later index wins, as in torch,
        and a nan stays the extreme once seen."""
        xp = self.xp
        dt = D.get(x.dtype)
        v = xp.moveaxis(self._c(x), dim, 0)
        vals, idx = xp.empty_like(v), xp.empty(v.shape, np.int64)
        if v.shape[0]:
            best, at = v[0].copy(), xp.zeros(v.shape[1:], np.int64)
            floating = v.dtype.kind == "f"
            for i in range(v.shape[0]):
                cur = v[i]
                take = (cur >= best) if largest else (cur <= best)
                if floating:
                    take = (take & ~xp.isnan(best)) | xp.isnan(cur)
                best = xp.where(take, cur, best)
                at = xp.where(take, i, at)
                vals[i], idx[i] = best, at
        return self._out(xp.moveaxis(vals, 0, dim), dt), self._out(xp.moveaxis(idx, 0, dim), D.int64)

    def logcumsumexp(self, x, dim: int, out_dtype):
        xp = self.xp
        v = xp.moveaxis(self._c(x, D.compute_dtype(out_dtype)), dim, 0)
        out = xp.empty_like(v)
        with np.errstate(all="ignore"):
            acc = None
            for i in range(v.shape[0]):
                acc = v[i] if acc is None else xp.logaddexp(acc, v[i])
                out[i] = acc
        return self._out(xp.moveaxis(out, 0, dim), out_dtype)

    def einsum(self, equation: str, arrays: list, out_dtype):
        cd = D.compute_dtype(out_dtype)
        return self._out(self.xp.einsum(equation, *[self._c(a, cd) for a in arrays]), out_dtype)
