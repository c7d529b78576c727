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

class BinScaled(nn.Module):
    """Learned scale per degree bin: exp(a[bin(deg)]), a initialised at log sqrt(d / (d + c mean d))."""
    def __init__(self, inner, deg, c, nbins=32):
        super().__init__(); self.inner = inner
        ld = torch.log1p(deg)
        edges = torch.quantile(ld, torch.linspace(0, 1, nbins + 1)[1:-1])
        b = torch.bucketize(ld, edges)
        self.register_buffer("bin", b)
        init = torch.zeros(nbins)
        for k in range(nbins):
            m = deg[b == k]
            if len(m): init[k] = 0.5 * torch.log(m.mean() / (m.mean() + c * deg.mean()))
        self.a = nn.Parameter(init)
    def forward(self, ids): return self.inner(ids) * self.a.exp()[self.bin[ids]].unsqueeze(-1)
    @property
    def weight(self): return self.inner.weight * self.a.exp()[self.bin].unsqueeze(-1)

_wrap0 = wrap
def wrap(mode, user, item, train=None):
    if "+" in mode:  # e.g. splitdrop0.1+degscale3
        for m in mode.split("+"): user, item = wrap(m, user, item, train)
        return user, item
    if mode.startswith("degbin"):
        c = float(mode[6:] or 3.0)
        du = torch.tensor(np.asarray(train.sum(1)).ravel(), dtype=torch.float32)
        di = torch.tensor(np.asarray(train.sum(0)).ravel(), dtype=torch.float32)
        return BinScaled(user, du, c), BinScaled(item, di, c)
    return _wrap0(mode, user, item, train)

_wrap1 = wrap
def wrap(mode, user, item, train=None):
    """``degscaleU<c>`` / ``degscaleI<c>``: the degree scale on one side only."""
    if "+" not in mode and mode[:9] in ("degscaleU", "degscaleI"):
        u2, i2 = _wrap1("degscale" + mode[9:], user, item, train)
        return (u2, item) if mode[8] == "U" else (user, i2)
    return _wrap1(mode, user, item, train)
