import torch, torch.nn as nn, numpy as np, os
MODE_ARG = {}
class Scaled(nn.Module):
    def __init__(self, inner, scale):
        super().__init__(); self.inner = inner; self.register_buffer("s", scale)
    def forward(self, ids): return self.inner(ids) * self.s[ids].unsqueeze(-1)
    @property
    def weight(self): return self.inner.weight * self.s.unsqueeze(-1)

class SplitDrop(nn.Module):
    def __init__(self, inner, p):
        super().__init__(); self.inner = inner; self.p = p
    def forward(self, ids):
        x = self.inner(ids)
        if not self.training: return x
        M = self.inner.M
        shape = x.shape
        x = x.view(-1, M, shape[-1] // M)
        mask = (torch.rand(x.shape[0], M, 1) >= self.p).float() / (1 - self.p)
        return (x * mask).view(shape)
    @property
    def weight(self): return self.inner.weight

def wrap(mode, user, item, train=None):
    if mode.startswith("splitdrop"):
        p = float(mode[9:])
        return SplitDrop(user, p), SplitDrop(item, p)
    if mode.startswith("degscale"):
        c = float(mode[8:] or 1.0)
        du = torch.tensor(np.asarray(train.sum(1)).ravel(), dtype=torch.float32)
        di = torch.tensor(np.asarray(train.sum(0)).ravel(), dtype=torch.float32)
        f = lambda d: torch.sqrt(d / (d + c * d.mean()))
        return Scaled(user, f(du)), Scaled(item, f(di))
    if mode.startswith("degpow"):
        b = float(mode[6:])
        du = torch.tensor(np.asarray(train.sum(1)).ravel(), dtype=torch.float32)
        di = torch.tensor(np.asarray(train.sum(0)).ravel(), dtype=torch.float32)
        f = lambda d: ((d + 1) / (d.mean() + 1)) ** b
        return Scaled(user, f(du)), Scaled(item, f(di))
    raise SystemExit(mode)
