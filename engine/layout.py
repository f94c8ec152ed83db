"""Layout: shape, strides and offset, in elements. All view math lives here; nothing moves data.

Every method returns a new Layout or raises a ShapeError naming the shapes involved. Strides are
never negative (torch has none either): flip copies.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass


class ShapeError(ValueError):
    """A shape, dim or index that does not fit the tensor it was applied to."""


def contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def norm_dim(dim: int, ndim: int, *, extra: int = 0) -> int:
    """Wrap a negative dim like torch; `extra` allows one past the end (unsqueeze)."""
    n = ndim + extra
    if type(dim) is int and -n <= dim < n:  # the common case (n >= 1), without the general checks
        return dim + n if dim < 0 else dim
    lo, hi = -max(n, 1), max(n, 1) - 1
    if not isinstance(dim, int) or not lo <= dim <= hi:
        raise ShapeError(f"dim {dim} out of range for a tensor of {ndim} dims (expected [{lo}, {hi}])")
    return dim % max(n, 1)


def broadcast_shapes(*shapes) -> tuple:
    if len(shapes) == 2 and shapes[0] == shapes[1] and type(shapes[0]) is tuple:  # the common case
        return shapes[0]
    shapes = [(s,) if isinstance(s, int) else tuple(s) for s in shapes]  # torch takes an int as a 1-d shape
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(-ndim, 0):
        size = 1
        for s in shapes:
            n = s[i] if -i <= len(s) else 1
            if n != 1:
                if size not in (1, n):
                    raise ShapeError(f"shapes {' and '.join(str(tuple(x)) for x in shapes)} do not broadcast "
                                     f"(dim {i}: {size} vs {n})")
                size = n
        out.append(size)
    return tuple(out)


def infer_shape(shape, numel: int) -> tuple:
    """Resolve one -1 in a reshape target."""
    known = _CONTIGUOUS.get(shape) if type(shape) is tuple and -1 not in shape else None
    if known is not None and known.numel == numel:
        return known.shape  # a shape seen before (Python ints, none negative): only the count to check
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"only one dim can be -1 in {shape}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if known == 0 or numel % known:
            raise ShapeError(f"shape {shape} is invalid for input of size {numel}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    if any(s < 0 for s in shape) or math.prod(shape) != numel:
        raise ShapeError(f"shape {shape} is invalid for input of size {numel}")
    return shape


_CONTIGUOUS: dict = {}  # shape -> the contiguous Layout at offset 0 (see Layout.contiguous)
_CONTIGUOUS_MAX = 4096


@dataclass(frozen=True)
class Layout:
    """Immutable: derived values (numel, contiguity) are computed once per object, and the contiguous
    layouts at offset 0 are shared, one per shape (_CONTIGUOUS), so an op's output costs no new Layout."""

    shape: tuple
    strides: tuple
    offset: int = 0

    @staticmethod
    def contiguous(shape, offset: int = 0) -> "Layout":
        if not offset:
            lay = _CONTIGUOUS.get(shape) if type(shape) is tuple else None
            if lay is not None:
                return lay
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ShapeError(f"negative size in shape {shape}")
        lay = Layout(shape, contiguous_strides(shape), offset)
        lay.__dict__["_contiguous"] = True
        if not offset:
            if len(_CONTIGUOUS) >= _CONTIGUOUS_MAX:  # a bounded cache: many distinct shapes start it afresh
                _CONTIGUOUS.clear()
            _CONTIGUOUS[shape] = lay
        return lay

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @functools.cached_property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        c = self.__dict__.get("_contiguous")
        if c is None:
            c = self.__dict__["_contiguous"] = self._contiguous_now()
        return c

    def _contiguous_now(self) -> bool:
        if self.numel == 0:  # torch: an empty tensor is contiguous whatever its strides
            return True
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    def span(self) -> int:
        """Elements from offset to the last addressed element, inclusive (0 when empty)."""
        if self.numel == 0:
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides))

    # ---- views -------------------------------------------------------------------------------
    def transpose(self, d0: int, d1: int) -> "Layout":
        d0, d1 = norm_dim(d0, self.ndim), norm_dim(d1, self.ndim)
        if self.ndim == 0 or d0 == d1:  # torch: transpose(0, 0) of a 0-d tensor is itself
            return self
        shape, strides = list(self.shape), list(self.strides)  # the permutation that swaps d0 and d1
        shape[d0], shape[d1], strides[d0], strides[d1] = shape[d1], shape[d0], strides[d1], strides[d0]
        return Layout(tuple(shape), tuple(strides), self.offset)

    def permute(self, dims) -> "Layout":
        dims = [norm_dim(d, self.ndim) for d in dims]
        if sorted(dims) != list(range(self.ndim)):
            raise ShapeError(f"permute dims {tuple(dims)} are not a permutation of {self.ndim} dims "
                             f"(shape {self.shape})")
        return Layout(tuple(self.shape[d] for d in dims), tuple(self.strides[d] for d in dims), self.offset)

    def narrow(self, dim: int, start: int, length: int) -> "Layout":
        dim = norm_dim(dim, self.ndim)
        n = self.shape[dim]
        if start < 0:
            start += n
        if not (0 <= start <= n and 0 <= length and start + length <= n):
            raise ShapeError(f"narrow(dim={dim}, start={start}, length={length}) out of range for size {n} "
                             f"(shape {self.shape})")
        return self.slice(dim, start, start + length, 1)

    def slice(self, dim: int, start, stop, step: int = 1) -> "Layout":
        dim = norm_dim(dim, self.ndim)
        if step is None:
            step = 1
        if step <= 0:
            raise ShapeError(f"slice step must be positive, got {step} (torch has no negative strides; use flip)")
        start, stop, _ = slice(start, stop, step).indices(self.shape[dim])
        size = max(0, -(-(stop - start) // step))
        shape = list(self.shape)
        strides = list(self.strides)
        shape[dim] = size
        offset = self.offset + (start * self.strides[dim] if size else 0)
        strides[dim] = self.strides[dim] * step
        return Layout(tuple(shape), tuple(strides), offset)

    def select(self, dim: int, index: int) -> "Layout":
        dim = norm_dim(dim, self.ndim)
        n = self.shape[dim]
        if not -n <= index < n:
            raise ShapeError(f"index {index} is out of bounds for dim {dim} with size {n} (shape {self.shape})")
        index %= n
        return Layout(self.shape[:dim] + self.shape[dim + 1:], self.strides[:dim] + self.strides[dim + 1:],
                      self.offset + index * self.strides[dim])

    def diagonal(self, offset: int, dim1: int, dim2: int) -> "Layout":
        """torch.diagonal: dims dim1 and dim2 replaced by one last dim walking their diagonal."""
        d1, d2 = norm_dim(dim1, self.ndim), norm_dim(dim2, self.ndim)
        if d1 == d2:
            raise ShapeError(f"diagonal dimensions cannot be identical ({dim1}, {dim2})")
        n1, n2 = self.shape[d1], self.shape[d2]
        size = max(0, min(n1, n2 - offset) if offset >= 0 else min(n1 + offset, n2))
        start = (offset * self.strides[d2] if offset >= 0 else -offset * self.strides[d1]) if size else 0
        keep = [i for i in range(self.ndim) if i not in (d1, d2)]
        return Layout(tuple(self.shape[i] for i in keep) + (size,),
                      tuple(self.strides[i] for i in keep) + (self.strides[d1] + self.strides[d2],), self.offset + start)

    def unsqueeze(self, dim: int) -> "Layout":
        dim = norm_dim(dim, self.ndim, extra=1)
        stride = self.strides[dim] * self.shape[dim] if dim < self.ndim else 1
        return Layout(self.shape[:dim] + (1,) + self.shape[dim:], self.strides[:dim] + (stride,) + self.strides[dim:],
                      self.offset)

    def squeeze(self, dim=None) -> "Layout":
        if dim is None:
            dims = [i for i, n in enumerate(self.shape) if n == 1]
        else:
            dims = [norm_dim(d, self.ndim) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))]
            dims = [d for d in dims if self.ndim and self.shape[d] == 1]  # torch ignores dims that are not 1
        keep = [i for i in range(self.ndim) if i not in dims]
        return Layout(tuple(self.shape[i] for i in keep), tuple(self.strides[i] for i in keep), self.offset)

    def expand(self, shape) -> "Layout":
        shape = tuple(int(s) for s in shape)
        if len(shape) < self.ndim:
            raise ShapeError(f"expand: target {shape} has fewer dims than the tensor's {self.shape}")
        lead = len(shape) - self.ndim
        new_shape, new_strides = [], []
        for i, n in enumerate(shape):
            if i < lead:
                if n < 0:
                    raise ShapeError(f"expand: -1 not allowed in a new leading dim of {shape}")
                new_shape.append(n)
                new_strides.append(0)
                continue
            have, stride = self.shape[i - lead], self.strides[i - lead]
            if n == -1 or n == have:
                new_shape.append(have)
                new_strides.append(stride)
            elif have == 1:
                new_shape.append(n)
                new_strides.append(0)
            else:
                raise ShapeError(f"expand: size {have} at dim {i - lead} cannot become {n} "
                                 f"(tensor {self.shape}, target {shape})")
        return Layout(tuple(new_shape), tuple(new_strides), self.offset)

    def broadcast_to(self, shape) -> "Layout":
        return self.expand(shape)

    def view(self, shape) -> "Layout | None":
        """Reshape without copying, or None when the strides make that impossible (torch's rule:
        each run of target dims must map onto a run of source dims that is itself contiguous)."""
        shape = infer_shape(shape, self.numel)
        if self.is_contiguous():
            return Layout.contiguous(shape, self.offset)
        if self.numel == 0:
            return Layout.contiguous(shape, self.offset)
        # walk source dims (skipping size-1) and target dims in chunks of equal element count
        src = [(n, s) for n, s in zip(self.shape, self.strides) if n != 1]
        new_strides = [0] * len(shape)
        si, ti = 0, 0
        while ti < len(shape) or si < len(src):
            if ti < len(shape) and shape[ti] == 1:
                new_strides[ti] = 1
                ti += 1
                continue
            if si >= len(src) or ti >= len(shape):
                return None
            # grow a chunk of source dims (which must be contiguous with each other) and a chunk
            # of target dims until both hold the same number of elements
            s_end = si + 1
            chunk_numel = src[si][0]
            t_numel = shape[ti]
            t_end = ti + 1
            while chunk_numel != t_numel:
                if chunk_numel < t_numel:
                    if s_end >= len(src) or src[s_end - 1][1] != src[s_end][0] * src[s_end][1]:
                        return None
                    chunk_numel *= src[s_end][0]
                    s_end += 1
                else:
                    if t_end >= len(shape):
                        return None
                    t_numel *= shape[t_end]
                    t_end += 1
            # the target dims of the chunk take strides from the chunk's innermost stride
            stride = src[s_end - 1][1]
            for k in range(t_end - 1, ti - 1, -1):
                new_strides[k] = stride
                stride *= shape[k]
            si, ti = s_end, t_end
        return Layout(shape, tuple(new_strides), self.offset)
