"""Key/value caches for decoder attention: preallocated once, written in place.

KVCache: one (B, Hkv, max_len, D) key and value buffer per layer, allocated up front. Each forward
asks `step(n)` for the positions of its n new tokens (a CacheStep of int64 tensors) and every layer
calls `update(layer, k, v, step)`, which writes k and v in place at those slots and returns the
buffers' views that attention should read. Nothing is reallocated per token.

SlidingWindowCache: a ring of `window` slots per layer (Mistral-style models keep at most `window`
keys in view). A new token at position p goes to slot p % window; `slot_pos` records which position
each slot holds (-1 while empty), and the attention mask is built from it.

StaticCache: for captured decoding (engine.capture). The write position lives on the device and
advances there, attention always reads all max_len slots (the mask hides the ones past the position
and outside a sliding window), so every decode step has the same shapes and addresses and a graph
of it replays without the host. The decode kernels skip the hidden slots' chunks.

Positions are tensors (slots, query_pos, key_pos) and the layers never read them on the host. The
host only counts tokens (`seen`, from input shapes); with `full_length=True` a KVCache exposes all
max_len slots to attention every step (masked by position).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import dtype as D
from engine import ops
from engine.tensor import Tensor


class CacheFullError(RuntimeError):
    """More tokens than the cache was allocated for."""


@dataclass
class CacheStep:
    """Positions of one forward's new tokens. query_pos (n,): their cache positions; key_pos (S,): the
    position each key attention reads holds (-1: empty); slots (m,): where new tokens are written;
    keep_from: new tokens before this index are not written (a prompt longer than the window)."""
    query_pos: Tensor
    key_pos: Tensor
    slots: Tensor
    kv_len: int
    mode: str = "write_then_read"  # or "concat": attend over (old ring + new tokens), then write
    keep_from: int = 0


def _write(buf: Tensor, slots: Tensor, x: Tensor, dim: int = 2) -> None:
    """buf[..., slots, ...] = x in place along `dim`. Slots come from the cache itself, so the bounds
    check of Tensor.__setitem__ (a host read on CUDA) is skipped on purpose."""
    key = (slice(None),) * dim + (slots.array,)
    buf.backend.setitem(buf.array, key, x.to(buf.dtype).array)


class _Buffers:
    """What every cache has: per-layer key and value buffers."""

    keys: list
    values: list

    def _alloc(self, num_layers: int, shape: tuple, dtype, device) -> None:
        """Zeroed key and value buffers of `shape` for each layer, and the cache's dtype."""
        self.keys = [ops.zeros(*shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [ops.zeros(*shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.dtype = D.get(dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)


class KVCache(_Buffers):
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype=D.float32, device=None, full_length: bool = False):
        self._alloc(num_layers, (batch_size, num_kv_heads, max_len, head_dim), dtype, device)
        self.batch_size, self.max_len, self.full_length = batch_size, max_len, full_length
        self.device = self.keys[0].device if num_layers else device
        self._arange = ops.arange(max_len, dtype=D.int64, device=device)
        self.seen = 0  # positions written so far: host bookkeeping from input shapes, never a device read

    def reset(self) -> None:
        self.seen = 0

    def mark(self):
        """The positions written so far, for rewind (the buffers' contents are not kept: a step run again
        from a mark writes the same slots)."""
        return self.seen

    def rewind(self, mark) -> None:
        """Back to mark() (a step that failed part way, e.g. a decode step whose capture failed, runs again)."""
        self.seen = mark

    def step(self, n: int) -> CacheStep:
        if self.seen + n > self.max_len:
            raise CacheFullError(f"KVCache holds {self.max_len} positions; {self.seen} are used and {n} more "
                                 f"were asked for (allocate a larger max_len)")
        start = self.seen
        self.seen += n
        slots = self._arange[start:start + n]
        kv_len = self.max_len if self.full_length else self.seen
        return CacheStep(query_pos=slots, key_pos=self._arange[:kv_len], slots=slots, kv_len=kv_len)

    def update(self, layer: int, k: Tensor, v: Tensor, step: CacheStep):
        """k, v (B, Hkv, n, D) -> the (B, Hkv, kv_len, D) views attention reads (after writing)."""
        kb, vb = self.keys[layer], self.values[layer]
        _write(kb, step.slots, k)
        _write(vb, step.slots, v)
        return kb[:, :, :step.kv_len], vb[:, :, :step.kv_len]


class SlidingWindowCache(_Buffers):
    """A ring of `window` slots per layer. Exact for attention that sees at most `window` positions
    (key position > query position - window), which is what Mistral's sliding window means."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, window: int,
                 dtype=D.float32, device=None):
        self._alloc(num_layers, (batch_size, num_kv_heads, window, head_dim), dtype, device)
        self.batch_size, self.window = batch_size, window
        self.slot_pos = ops.full((window,), -1, dtype=D.int64, device=device)  # position held by each slot
        self.max_len = None  # unbounded: old positions fall out of the window
        self.seen = 0

    def reset(self) -> None:
        self.seen = 0
        self.slot_pos.fill_(-1)

    def mark(self):
        """See KVCache.mark (here also the positions the ring's slots hold, on the device)."""
        return self.seen, self.slot_pos.clone()

    def rewind(self, mark) -> None:
        self.seen = mark[0]
        self.slot_pos.copy_(mark[1])

    def step(self, n: int) -> CacheStep:
        w = self.window
        new_pos = ops.arange(self.seen, self.seen + n, dtype=D.int64, device=self.slot_pos.device)
        self.seen += n
        if n == 1:  # decode: the new token replaces the one that just left the window, then all is read
            slots = new_pos.remainder(w)
            _write(self.slot_pos, slots, new_pos, dim=0)
            return CacheStep(query_pos=new_pos, key_pos=self.slot_pos, slots=slots, kv_len=w)
        # a chunk: its early queries still need keys that its own later tokens would overwrite, so
        # attend over (ring before the write + the whole chunk), then keep the chunk's last `w` tokens
        keep_from = max(0, n - w)
        key_pos = ops.cat([self.slot_pos.clone(), new_pos])
        slots = new_pos[keep_from:].remainder(w)
        _write(self.slot_pos, slots, new_pos[keep_from:], dim=0)
        return CacheStep(query_pos=new_pos, key_pos=key_pos, slots=slots, kv_len=w + n, mode="concat",
                         keep_from=keep_from)

    def update(self, layer: int, k: Tensor, v: Tensor, step: CacheStep):
        kb, vb = self.keys[layer], self.values[layer]
        if step.mode == "concat":
            k_all, v_all = ops.cat([kb, k.to(kb.dtype)], 2), ops.cat([vb, v.to(vb.dtype)], 2)
            _write(kb, step.slots, k[:, :, step.keep_from:])
            _write(vb, step.slots, v[:, :, step.keep_from:])
            return k_all, v_all
        _write(kb, step.slots, k)
        _write(vb, step.slots, v)
        return kb, vb


class StaticCache(KVCache):
    """(B, Hkv, max_len, D) keys and values per layer, and the next write position `pos` (int64, on
    the device). A step of n tokens writes slots pos .. pos + n - 1 and advances pos on the device;
    attention reads all max_len slots with a mask built from the positions. Nothing a step does
    depends on host state, so a captured step replays exactly (see the module docstring).

    `seen` still counts positions on the host for callers that run eagerly; a captured replay does
    not update it (engine.generation.Decoder keeps its own count)."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype=D.float32, device=None):
        super().__init__(num_layers, batch_size, num_kv_heads, head_dim, max_len, dtype, device, full_length=True)
        self.pos = ops.zeros(1, dtype=D.int64, device=device)

    def reset(self) -> None:
        super().reset()
        self.pos.zero_()

    def mark(self):
        """See KVCache.mark (here also the device write position)."""
        return self.seen, self.pos.clone()

    def rewind(self, mark) -> None:
        self.seen = mark[0]
        self.pos.copy_(mark[1])

    def step(self, n: int) -> CacheStep:
        if self.seen + n > self.max_len:
            raise CacheFullError(f"StaticCache holds {self.max_len} positions; {self.seen} are used and {n} more "
                                 f"were asked for (allocate a larger max_len)")
        slots = self._arange[:n] + self.pos  # (n,) on the device
        self.pos.add_(n)
        self.seen += n
        return CacheStep(query_pos=slots, key_pos=self._arange, slots=slots, kv_len=self.max_len)
