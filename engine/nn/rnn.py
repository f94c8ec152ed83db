"""LSTM with torch's arguments, weight names and gate order.

Per layer k and direction (suffix "" forward, "_reverse" backward), as in torch:
    weight_ih_l{k}{sfx} (4H, in)    weight_hh_l{k}{sfx} (4H, P)    bias_ih_l{k}{sfx} (4H,)    bias_hh_l{k}{sfx} (4H,)
    weight_hr_l{k}{sfx} (P, H)      only with proj_size > 0 (P = proj_size, else P = H)
The 4H rows are the gates in torch's order i, f, g, o:
    i = sigmoid(.), f = sigmoid(.), g = tanh(.), o = sigmoid(.)
    c' = f * c + i * g;   h' = o * tanh(c')   (then h' = h' @ W_hr.T with projections)

forward(x, hx=None) -> (output, (h_n, c_n)). x is (L, N, in), or (N, L, in) with batch_first, or
unbatched (L, in). output (.., L, .., D*P); h_n (D*num_layers, N, P); c_n (D*num_layers, N, H).
Dropout between layers is the identity at inference.
"""
from __future__ import annotations

from engine import functional as F
from engine import ops
from engine.layout import ShapeError
from engine.nn.module import Module
from engine.tensor import Tensor


class LSTM(Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__()
        if proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(f"LSTM: proj_size must be in [0, hidden_size), got {proj_size}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.bidirectional, self.proj_size = bidirectional, proj_size
        h, p = hidden_size, proj_size or hidden_size
        for k in range(num_layers):
            layer_in = input_size if k == 0 else p * self.num_directions
            for sfx in self._suffixes():
                setattr(self, f"weight_ih_l{k}{sfx}", ops.zeros(4 * h, layer_in, dtype=dtype, device=device))
                setattr(self, f"weight_hh_l{k}{sfx}", ops.zeros(4 * h, p, dtype=dtype, device=device))
                if bias:
                    setattr(self, f"bias_ih_l{k}{sfx}", ops.zeros(4 * h, dtype=dtype, device=device))
                    setattr(self, f"bias_hh_l{k}{sfx}", ops.zeros(4 * h, dtype=dtype, device=device))
                if proj_size:
                    setattr(self, f"weight_hr_l{k}{sfx}", ops.zeros(p, h, dtype=dtype, device=device))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _params_of(self, k: int, sfx: str):
        g = lambda n: getattr(self, f"{n}_l{k}{sfx}", None)  # noqa: E731
        return g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"), g("weight_hr")

    def _run_direction(self, x, h, c, params, reverse: bool):
        """x (L, N, in); h (N, P); c (N, H) -> (outputs (L, N, P), h, c)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = params
        xw = F.linear(x, w_ih, b_ih)                   # (L, N, 4H): the input half of every step at once
        dt = xw.dtype
        arr = lambda t: None if t is None else t.to(dt).array  # noqa: E731
        # the step loop is the backend's (a plain composition of its ops by default, engine/backends/fused.py)
        outs, h, c = xw.backend.lstm_recurrence(xw.array, arr(h), arr(c), arr(w_hh), arr(b_hh), arr(w_hr),
                                                reverse, dt)
        wrap = lambda a: Tensor._wrap(a, xw.backend, dt)  # noqa: E731
        return wrap(outs), wrap(h), wrap(c)

    def forward(self, x, hx=None):
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ShapeError(f"LSTM: expected input (L, N, {self.input_size}) (or batch_first / unbatched), "
                             f"got {x.shape}")
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)                       # (N, L, in) -> (L, N, in)
        n = x.shape[1]
        nd, h_sz, p_sz = self.num_directions, self.hidden_size, self.proj_size or self.hidden_size
        if hx is None:
            h0 = ops.zeros(self.num_layers * nd, n, p_sz, dtype=x.dtype, device=x.device)
            c0 = ops.zeros(self.num_layers * nd, n, h_sz, dtype=x.dtype, device=x.device)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if h0.shape != (self.num_layers * nd, n, p_sz) or c0.shape != (self.num_layers * nd, n, h_sz):
                raise ShapeError(f"LSTM: hx shapes {h0.shape}, {c0.shape} do not fit "
                                 f"({self.num_layers * nd}, {n}, {p_sz}) and ({self.num_layers * nd}, {n}, {h_sz})")
        hs, cs = [], []
        for k in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self._suffixes()):
                idx = k * nd + d
                out, h, c = self._run_direction(x, h0[idx], c0[idx], self._params_of(k, sfx), reverse=d == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = outs[0] if nd == 1 else ops.cat(outs, dim=-1)
        h_n, c_n = ops.stack(hs, dim=0), ops.stack(cs, dim=0)
        if unbatched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n, c_n)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s
