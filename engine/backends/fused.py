"""Optional fused ops of the backend protocol, each with its plain composition as the default.

A backend inherits these (NumpyBackend does) and overrides one when it has a faster kernel for some
shapes; every override has a test against the composition here (tests/test_fused.py). Nothing else in
the engine checks which backend it runs on: models reach these ops through the ordinary paths
(F.linear, RmsNorm, apply_rotary, nn.attention.attention) and through engine.capture's fusion pass.

Rounding follows the eager ops op by op, so a fused kernel can equal the ops it replaces bit for bit
(16-bit floats compute in float32 and round once per op, as the eager kernels do).

  linear_fused(x, w, b, out, norm=, glu=, residual=)   [rms_norm ->] linear [-> act(.) * up] [-> + residual]
                                                       (w a weight array, or a QOperand: qlinear)
  linear_group(x, ws, bs, out, norm=)                  several linears of one input (q, k, v)
  moe(x, weights, experts, w_gate, w_up, w_down, act)  routed experts (Mixtral), summed in expert order
  rotary(x, cos, sin_signed, out)                      x * cos + swap_halves(x) * sin_signed on the first
                                                       cos.shape[-1] dims of each head (HF rotate_half)
  rope(positions, inv_freq, scaling, out)             transformers' rotary cos and sin of positions (B|1, L)
  causal_mask(query_pos, key_pos, window, out)         the additive causal mask (1, L, S) of cache positions
  rotary_cache(q, k, v, cos, sin_signed, k_cache, v_cache, slots, out, q_out=)
                                                       a decode step's rotary of q and k and its cache writes
                                                       (k_cache[:, :, slots] = rotary(k), v likewise)
  group_norm_act(x, groups, w, b, eps, act, out)       group_norm [-> act] (diffusers' norm -> SiLU)
  conv_act(x, w, b, stride, padding, dilation, groups, act, out)
                                                       conv [-> act] (YOLO's Conv-BN-SiLU, BN folded)
  attention(q, k, v, mask, scale, out)                 transformers' eager attention (scores in the
                                                       activations' dtype, softmax in float32)
  sample(logits, seen, penalty, temperature, top_k, top_p, seed, counter)
                                                       the next tokens (engine/sampling.py)
  advance(tokens, tok, out, n)                         a decode step's bookkeeping: tok[:, 0] = out[:, n] =
                                                       tokens, n += 1 (engine.generation.Decoder)
  random_normal(shape, dtype, seed, std)               N(0, std) weights for presets
  lstm_recurrence(xw, h, c, w_hh, b_hh, w_hr, reverse, out)
                                                       one LSTM layer direction over time (nn.LSTM)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine import dtype as D

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")  # the GLU activations (LLaMA family: silu; Gemma: gelu_tanh)
NORM_STYLES = ("torch", "llama", "gemma")


class QOperand(NamedTuple):
    """A quantized weight as the fused linear ops take it: qlinear's arguments (engine/quant.py's blocks
    (rows, row_bytes), their format, in_features). engine.capture's plan hands one to linear_fused /
    linear_group in place of a weight array when the linears it fuses are qlinear calls."""
    data: object
    qtype: str
    cols: int

    @property
    def shape(self) -> tuple:
        return (self.data.shape[0], self.cols)


class FusedOps:
    # ---- linear with its neighbours ------------------------------------------------------------------
    def _lin(self, x, w, b, out_dtype):
        """linear, or qlinear for a QOperand weight."""
        if isinstance(w, QOperand):
            return self.qlinear(x, w.data, w.qtype, w.cols, b, out_dtype)
        return self.linear(x, w, b, out_dtype)

    def linear_fused(self, x, w, b, out_dtype, norm=None, glu=None, residual=None, frozen: bool = False):
        """norm: (weight, eps, style): x = rms_norm(x) over the last dim first (see rms_norm's styles).
        glu: (w_up, b_up, act): y = act(linear(x, w, b)) * linear(x, w_up, b_up), each op rounded.
        residual: y = residual + y (rounded once, as add). frozen: no earlier op of the step writes the
        weights (capture_plan's Fused.frozen), so a GPU backend may load them before the op before ends."""
        if norm is not None:
            x = self.rms_norm(x, 1, norm[0], norm[1], out_dtype, norm[2])
        y = self._lin(x, w, b, out_dtype)
        if glu is not None:
            w_up, b_up, act = glu
            up = self._lin(x, w_up, b_up, out_dtype)
            y = self.binary("mul", self.unary(act, y, out_dtype), up, out_dtype, out_dtype)
        if residual is not None:
            y = self.binary("add", residual, y, out_dtype, out_dtype)
        return y

    def group_norm_act(self, x, groups: int, weight, bias, eps: float, act, out_dtype):
        """act(group_norm(x)), each op rounded (act None: the norm alone)."""
        y = self.group_norm(x, groups, weight, bias, eps, out_dtype)
        return y if act is None else self.unary(act, y, out_dtype)

    def conv_act(self, x, w, b, stride, padding, dilation, groups: int, act, out_dtype):
        """act(conv(x)), each op rounded (act None: the conv alone)."""
        y = self.conv(x, w, b, stride, padding, dilation, groups, out_dtype)
        return y if act is None else self.unary(act, y, out_dtype)

    def linear_group(self, x, ws: list, bs: list, out_dtype, norm=None, frozen: bool = False) -> list:
        """[linear_fused(x, w, b, norm=norm) for each (w, b)]: linears sharing one input (q, k, v);
        the norm is computed once for all of them (frozen: linear_fused's)."""
        if norm is not None:
            x = self.rms_norm(x, 1, norm[0], norm[1], out_dtype, norm[2])
        return [self._lin(x, w, b, out_dtype) for w, b in zip(ws, bs)]

    # ---- mixture of experts --------------------------------------------------------------------------------
    def moe(self, x, weights, experts, w_gate: list, w_up: list, w_down: list, act: str, out_dtype):
        """Each token through its routed experts (transformers' Mixtral order): for every expert e in
        ascending order, out[t] += round(down_e(act(gate_e x) * up_e x) * weight[t, slot]), each op
        rounded. x (T, H); weights (T, k) float32; experts (T, k) int64; w_* one weight per expert.
        The dispatch reads the routing on the host (one backend call, so a captured step still makes
        the same calls every time; the cupy backend routes on the device)."""
        chosen = np.asarray(self.to_numpy(experts))
        w_host = np.asarray(self.to_numpy(weights))
        out = self.full(x.shape, 0, out_dtype)
        for e in range(len(w_gate)):
            tok, slot = np.nonzero(chosen == e)  # tokens routed to e, and where e sits in their top-k
            if not len(tok):
                continue
            idx = self.from_numpy(tok.astype(np.int64), D.int64)
            xe = self.take(x, idx, 0)
            h = self.binary("mul", self.unary(act, self.linear(xe, w_gate[e], None, out_dtype), out_dtype),
                            self.linear(xe, w_up[e], None, out_dtype), out_dtype, out_dtype)
            y = self.linear(h, w_down[e], None, out_dtype)
            wt = self.from_numpy(w_host[tok, slot][:, None].astype(np.float32), D.float32)
            y = self.cast(self.binary("mul", y, wt, D.float32, D.float32), out_dtype)  # times fp32, rounded once
            cur = self.take(out, idx, 0)
            self.setitem(out, (idx,), self.binary("add", cur, y, out_dtype, out_dtype))
        return out

    # ---- rotary positions ---------------------------------------------------------------------------------
    def rotary(self, x, cos, sin_signed, out_dtype):
        """x (B, H, L, D); cos and sin_signed (B|1, L, rot), rot <= D, in out_dtype. The first rot dims
        of each head rotate (x1, x2) -> (x1 c1 - x2 s1, x2 c2 + x1 s2); the rest pass through."""
        xp = self.xp
        rot, d = cos.shape[-1], x.shape[-1]
        half = rot // 2
        c, s = cos[:, None], sin_signed[:, None]  # (B|1, 1, L, rot): broadcast over heads
        xr = x[..., :rot]
        swapped = self.concat([xr[..., half:], xr[..., :half]], -1, out_dtype)
        out = self.binary("add", self.binary("mul", xr, c, out_dtype, out_dtype),
                          self.binary("mul", swapped, s, out_dtype, out_dtype), out_dtype, out_dtype)
        if rot == d:
            return out
        return self.concat([out, xp.broadcast_to(x[..., rot:], out.shape[:-1] + (d - rot,))], -1, out_dtype)

    def rope(self, positions, inv_freq, scaling: float, out_dtype):
        """positions (B|1, L) int64, inv_freq (rot / 2,) float32 -> (cos, sin), each (B|1, L, rot) in out_dtype:
        emb = cat(freqs, freqs) for freqs = float32(positions) * inv_freq, then cos(emb) and sin(emb) in
        float32, times scaling (when not 1), rounded once (transformers' rotary embedding)."""
        f32 = D.float32
        p = self.cast(positions, f32)
        freqs = self.binary("mul", p.reshape(p.shape + (1,)), inv_freq, f32, f32)  # (B|1, L, rot / 2)
        emb = self.concat([freqs, freqs], freqs.ndim - 1, f32)
        cos, sin = self.unary("cos", emb, f32), self.unary("sin", emb, f32)
        if scaling != 1.0:
            cos, sin = self.binary("mul", cos, scaling, f32, f32), self.binary("mul", sin, scaling, f32, f32)
        if out_dtype is not f32:
            cos, sin = self.cast(cos, out_dtype), self.cast(sin, out_dtype)
        return cos, sin

    def causal_mask(self, query_pos, key_pos, window, out_dtype):
        """query_pos (L,), key_pos (S,) int64 cache positions (-1: an empty slot) -> the additive mask (1, L, S)
        in out_dtype: 0 where key j is not in query i's future, not empty and (window: an int) within the
        window (key > query - window), else the dtype's most negative finite value."""
        q, kp = query_pos.reshape(-1, 1), key_pos.reshape(1, -1)
        i64, b = D.int64, D.bool_
        ok = self.binary("bitwise_and", self.binary("le", kp, q, i64, b), self.binary("ge", kp, 0, i64, b), b, b)
        if window is not None:
            lo = self.binary("sub", q, int(window), i64, i64)
            ok = self.binary("bitwise_and", ok, self.binary("gt", kp, lo, i64, b), b, b)
        dt = D.get(out_dtype)
        m = self.where(ok, 0.0, D.min_value(dt), D.float32)
        m = m.reshape((1,) + m.shape)
        return m if dt is D.float32 else self.cast(m, dt)

    def rotary_cache(self, q, k, v, cos, sin_signed, k_cache, v_cache, slots, out_dtype, q_out=None):
        """The rotary and KV-cache writes of one attention layer's step (engine.capture's plan fuses the
        model's rotary(q), rotary(k), cache.update into this): k_cache[:, :, slots] = rotary(k) and
        v_cache[:, :, slots] = v in place, -> rotary(q) (written into q_out when given; q None: the
        writes alone). q (B, Hq, L, D), k/v (B, Hkv, L, D), caches (B, Hkv, S, D) in out_dtype, slots (L,)
        int64 on the device (the step's cache positions: a captured step replays with new ones)."""
        key = (slice(None), slice(None), slots)
        self.setitem(k_cache, key, self.rotary(k, cos, sin_signed, out_dtype))
        self.setitem(v_cache, key, v)
        if q is None:
            return None
        qr = self.rotary(q, cos, sin_signed, out_dtype)
        if q_out is None:
            return qr
        self.copy_(q_out, qr)
        return q_out

    # ---- attention -------------------------------------------------------------------------------------------
    def attention(self, q, k, v, mask, scale: float, out_dtype):
        """transformers' eager attention: scores in the activations' dtype, times scale, plus the
        additive mask, softmax in float32, rounded back, times V.
        q (B, Hq, L, D), k/v (B, Hkv, S, D|Dv), mask (B|1, 1, L, S) additive or None -> (B, L, Hq * Dv).
        The rep = Hq / Hkv query heads of one kv head become rows of one matrix, so K and V are read once."""
        b, hq, L, d = q.shape
        hkv, S = k.shape[1], k.shape[2]
        rep = hq // hkv
        qg = self.contiguous(q, out_dtype).reshape(b, hkv, rep * L, d)
        s = self.matmul(qg, k.swapaxes(-1, -2), out_dtype)  # (B, Hkv, rep*L, S)
        s = self.binary("mul", s, scale, out_dtype, out_dtype)
        if mask is not None:
            s = self.binary("add", s.reshape(b, hkv, rep, L, S), mask[:, :, None], out_dtype, out_dtype)
        p = self.softmax(s.reshape(b, hkv, rep * L, S), -1, False, D.float32)
        o = self.matmul(self.cast(p, out_dtype), v, out_dtype)  # (B, Hkv, rep*L, Dv)
        dv = v.shape[-1]
        return self.contiguous(o.reshape(b, hq, L, dv).swapaxes(1, 2), out_dtype).reshape(b, L, hq * dv)

    # ---- recurrence -------------------------------------------------------------------------------------------
    def lstm_recurrence(self, xw, h, c, w_hh, b_hh, w_hr, reverse: bool, out_dtype):
        """One LSTM layer direction over time: xw (L, N, 4H) is the input half of every step (x W_ih^T +
        b_ih, computed at once), h (N, P), c (N, H) the initial state -> (outputs (L, N, P), h, c). Per
        step, gates in torch's order i, f, g, o: gates = xw[t] + (h W_hh^T + b_hh); c = sigmoid(f) c +
        sigmoid(i) tanh(g); h = sigmoid(o) tanh(c) [then h W_hr^T]; each op rounded as the eager ops."""
        n_steps, hid = xw.shape[0], c.shape[-1]
        outs = [None] * n_steps
        for t in (range(n_steps - 1, -1, -1) if reverse else range(n_steps)):
            gates = self.binary("add", xw[t], self.linear(h, w_hh, b_hh, out_dtype), out_dtype, out_dtype)
            i, f, g, o = (gates[..., k * hid:(k + 1) * hid] for k in range(4))
            sig = lambda a: self.unary("sigmoid", a, out_dtype)  # noqa: E731
            fc = self.binary("mul", sig(f), c, out_dtype, out_dtype)
            ig = self.binary("mul", sig(i), self.unary("tanh", g, out_dtype), out_dtype, out_dtype)
            c = self.binary("add", fc, ig, out_dtype, out_dtype)
            h = self.binary("mul", sig(o), self.unary("tanh", c, out_dtype), out_dtype, out_dtype)
            if w_hr is not None:
                h = self.linear(h, w_hr, None, out_dtype)
            outs[t] = h.reshape((1,) + h.shape)
        return self.concat(outs, 0, out_dtype), h, c

    # ---- choosing tokens ----------------------------------------------------------------------------------
    def sample(self, logits, seen, penalty: float, temperature: float, top_k, top_p, seed: int, counter):
        """(B, V) logits -> (B,) int64 tokens (engine/sampling.py's processors and draw); seen: (B, V)
        bool or None; counter: the generator's (1,) int64 counter, advanced in place by one draw."""
        from engine import sampling
        x = self.to_numpy(logits)
        c = int(self.to_numpy(counter).reshape(-1)[0])
        s = self.to_numpy(seen) if seen is not None else None
        toks = sampling.sample(np.asarray(x, np.float32), s, penalty, temperature, top_k, top_p, seed, c)
        self.copy_(counter, c + 1)
        return self.from_numpy(toks, D.int64)

    def advance(self, tokens, tok, out, n) -> None:
        """A decode step's bookkeeping, in place: tok (B, 1) = tokens (B,) int64, out[:, n] = tokens for the
        device column n (1,) int64, then n += 1."""
        col = tokens.reshape(-1, 1)
        self.copy_(tok, col)
        self.setitem(out, (slice(None), n), col)
        self.copy_(n, self.binary("add", n, 1, D.int64, D.int64))

    # ---- collectives --------------------------------------------------------------------------------------------
    def all_reduce(self, x, comm) -> None:
        """x (contiguous) becomes the sum of every rank's x, in place: the communicator moves the bytes
        (engine.distributed: shared memory between processes on the CPU, NCCL on the current stream on CUDA)."""
        comm.all_reduce_array(x)

    # ---- CUDA graphs: none by default (engine.capture then runs steps eagerly) ----------------------------
    def graph_capture(self, fn, memory):
        return None

    def graph_launch(self, graph) -> None:
        raise RuntimeError(f"{self.device} has no CUDA graphs")

    # engine.capture sets `rehearsing` while it runs a step eagerly just before capturing it: capturing() is
    # then True, so that run takes the capture-time paths (their kernels compile and their blocks reach
    # the pool's cache before the capture, and the step's output equals the graph's)
    rehearsing = False

    def capturing(self) -> bool:
        return self.rehearsing

    # ---- random weights ----------------------------------------------------------------------------------------
    def random_normal(self, shape, dtype, seed: int, std: float = 1.0):
        """N(0, std) in `dtype`, drawn on the host with numpy's PCG64 (same values on every device)."""
        a = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
        if std != 1.0:
            a *= np.float32(std)
        return self.from_numpy(a, D.get(dtype))
