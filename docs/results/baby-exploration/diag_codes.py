import torch, numpy as np, sys
sys.path.insert(0, "../../.."); sys.path.insert(0, ".")
from harness import load
from urecjpq_plugin.codes import svd_codes, svd_pq_codes, random_codes
tr, _, _ = load("../../../../shared/datasets/baby/baby.inter")
uw, iw = torch.load("full2020.pt")
def recon_err(w, codes):
    M = codes.shape[1]; d = w.shape[1] // M; err = 0
    for k in range(M):
        sub = w[:, k*d:(k+1)*d]; c = codes[:, k].long()
        cent = torch.zeros(int(c.max())+1, d).index_add_(0, c, sub) / torch.bincount(c).clamp_min(1)[:, None].float()
        err += ((sub - cent[c])**2).sum()
    return float((err / (w**2).sum()).sqrt())
def nn_share(w, codes, k=10):
    x = torch.nn.functional.normalize(w, dim=1); sim = x @ x.T; sim.fill_diagonal_(-2)
    nn = sim.topk(k, dim=1).indices
    same = (codes[nn].long() == codes[:, None, :].long()).float().mean(dim=(0, 1))  # per split
    return float(same.mean()), float(same.max())
sets = {"svd": svd_codes(tr, 16, 256, 2020), "svd_pq": svd_pq_codes(tr, 16, 256, 2020, rank=64),
        "random": (random_codes(tr.shape[0], 16, 256, 1), random_codes(tr.shape[1], 16, 256, 2))}
for name, (uc, ic) in sets.items():
    print(f"{name:7s} item recon err {recon_err(iw, ic):.3f} user recon err {recon_err(uw, uc):.3f} "
          f"item 10-NN share a sub-id (mean/max over splits) {nn_share(iw, ic)[0]:.4f}/{nn_share(iw, ic)[1]:.4f}")
