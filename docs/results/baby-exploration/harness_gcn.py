"""LightGCN variant of harness.py (RecBole defaults: 2 layers, mean of layers, reg 1e-5, Adam 1e-3, batch 2048)."""
import argparse, json, sys, time
import numpy as np, scipy.sparse as sp, torch, torch.nn as nn, torch.nn.functional as F
import harness
from harness import load, evaluate
from urecjpq_plugin import JPQConfig, apply_jpq


class MF(nn.Module):
    def __init__(self, nu, ni, d):
        super().__init__()
        self.user_embedding = nn.Embedding(nu, d); self.item_embedding = nn.Embedding(ni, d)
        nn.init.xavier_normal_(self.user_embedding.weight); nn.init.xavier_normal_(self.item_embedding.weight)


def norm_adj(train):
    nu, ni = train.shape
    A = sp.bmat([[None, train], [train.T, None]]).tocsr().astype(np.float32)
    deg = np.asarray(A.sum(1)).ravel(); dinv = np.power(deg + 1e-7, -0.5)
    L = sp.diags(dinv) @ A @ sp.diags(dinv); L = L.tocoo()
    return torch.sparse_coo_tensor(np.vstack([L.row, L.col]), L.data, L.shape).coalesce()


class _RowNormGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, model):
        ctx.model = model
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        m = ctx.model; b = m.row_beta
        m.row_v.mul_(b).add_(g.pow(2).mean(1), alpha=1 - b); m.row_t += 1
        vhat = m.row_v / (1 - b ** m.row_t)
        return g / (vhat.sqrt().unsqueeze(1) + 1e-12).pow(m.row_power) * 1e-4, None


def propagate(model, L, layers, nu):
    x = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    if getattr(model, "unit_log_scale", None) is not None:  # rows of one learned length per side: direction only per ID
        x = F.normalize(x, dim=1) * torch.cat([model.unit_log_scale[0].exp().expand(nu), model.unit_log_scale[1].exp().expand(len(x) - nu)]).unsqueeze(1)
    if getattr(model, "log_scale", None) is not None:  # a learned scale per log2-degree bucket
        x = x * model.log_scale[model.bucket].exp().unsqueeze(-1)
    if getattr(model, "grad_gate", None) is not None:
        # forward unchanged; the gradient reaching the shared rows through ID i is scaled by gate[i]
        g = model.grad_gate.unsqueeze(-1)
        x = x * g + (x * (1 - g)).detach()
    if getattr(model, "row_v", None) is not None:
        x = _RowNormGrad.apply(x, model)  # each ID's gradient divided by its running RMS before the shared rows sum it
    if getattr(model, "fixed", None) is not None:
        x = x + (model.fixed_log_scale.exp() * model.fixed if getattr(model, "fixed_log_scale", None) is not None else model.fixed)  # a fixed (never trained) random row per ID, at xavier scale times --fixed
    if getattr(model, "private", None) is not None:  # the head's own residual rows on top of their decoded rows
        x = x.index_add(0, model.private_idx, model.private)
    return propagate_rows(x, L, layers, nu)


def propagate_rows(x, L, layers, nu):
    """LightGCN's final rows: the mean of ``x`` (users then items) and its ``layers`` propagations by ``L``."""
    out = [x]
    for _ in range(layers):
        x = torch.sparse.mm(L, x); out.append(x)
    x = torch.stack(out).mean(0)
    return x[:nu], x[nu:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True); p.add_argument("--jpq", default="none")  # none | key=val,... for JPQConfig
    p.add_argument("--epochs", type=int, default=80); p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=2020); p.add_argument("--layers", type=int, default=2)
    p.add_argument("--reg", type=float, default=1e-5); p.add_argument("--quiet", action="store_true")
    p.add_argument("--fixed", type=float, default=0.0)  # add a fixed random per-ID row of std xavier*this
    p.add_argument("--codes", default=None)  # a codes_exp.make2 kind (pqnsvd64, file:<tables.pt>, ...) instead of the plugin's
    p.add_argument("--save", default=None)  # save the ego tables (user, item) of the best epoch here
    p.add_argument("--ptq", default=None)  # start from these trained ego tables, product-quantised (what `compress` does)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init-centroids", type=float, default=0.0)  # sub-embeddings start at the codes' centroids of the unit SVD rows, at this mean row norm
    p.add_argument("--learned-scale", action="store_true")  # a learned multiplier per log2(degree) bucket, users and items apart
    p.add_argument("--grad-gate", type=float, default=0.0)  # scale ID i's gradient into the shared rows by n/(n + c mean n), c = this
    p.add_argument("--gate-power", type=float, default=1.0)  # ... raised to this power
    p.add_argument("--row-norm-grad", type=float, default=0.0)  # beta of a per-ID running mean of squared gradients; 0 = off
    p.add_argument("--row-power", type=float, default=1.0)  # divide by RMS ** this
    p.add_argument("--fixed-learned", action="store_true")  # the fixed random row gets one learned multiplier (log scale, starts at 0)
    p.add_argument("--pq-degree-weight", type=float, default=0.0)  # svd_pq_cos codes from k-means weighted by degree ** this
    p.add_argument("--private-top", type=int, default=0)  # a private residual row (zero start) for the K most-seen IDs per side
    p.add_argument("--neg-power", type=float, default=0.0)  # negatives drawn in proportion to item degree ** this (0 = uniform, BPR's)
    p.add_argument("--unit-rows", type=float, default=0.0)  # each ID's row scaled to unit length times a learned per-side scale started at this
    p.add_argument("--private-sides", default="item")  # item | user | user+item
    a = p.parse_args()
    torch.manual_seed(a.seed); np.random.seed(a.seed); torch.set_num_threads(1)
    train, valid, test = load(a.data); nu, ni = train.shape
    model = MF(nu, ni, 64)
    if a.jpq != "none":
        kw = {}
        for kv in a.jpq.split(","):
            if kv:
                k, v = kv.split("=")
                if v.lower() in ("true", "false"):
                    kw[k] = v.lower() == "true"; continue
                for cast in (int, float, str):
                    try:
                        kw[k] = cast(v); break
                    except ValueError:
                        pass
        given = None
        if a.codes:
            import codes_exp
            M = kw.get("M", 16)
            uc, ic = codes_exp.make2(a.codes, train, M, kw.get("ksub", 256), a.seed, 64)
            given = {"user": uc, "item": ic}
        if a.pq_degree_weight:
            from urecjpq_plugin.codes import svd_pq_codes
            uc, ic = svd_pq_codes(train, kw.get("M", 16), kw.get("ksub", 256), a.seed, 64, unit_rows=True,
                                  degree_weight=a.pq_degree_weight)
            given = {"user": uc, "item": ic}
        # Rounds up to the tenth ran before jpq_unit_rows existed: plain rows unless --jpq asks (unit_rows=true).
        kw.setdefault("unit_rows", False)
        apply_jpq(model, JPQConfig(seed=a.seed, **kw), counts={"user": nu, "item": ni}, interactions=train, codes=given)
    if a.init_centroids:
        from scipy.sparse.linalg import svds
        U_, s_, Vt_ = svds(train.astype(np.float64), k=64, random_state=a.seed)
        for module, rows in ((model.user_embedding, U_ * np.sqrt(s_)), (model.item_embedding, Vt_.T * np.sqrt(s_))):
            rows = torch.from_numpy(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).float()
            M_, K_, ds_ = module.sub_embeddings.shape; codes_ = module.codes.long()
            cent = module.sub_embeddings.detach().clone()
            for k in range(M_):
                part = rows[:, k * ds_:(k + 1) * ds_]
                sums = torch.zeros(K_, ds_).index_add_(0, codes_[:, k], part)
                cnt = torch.bincount(codes_[:, k], minlength=K_).float().unsqueeze(1)
                cent[k] = torch.where(cnt > 0, sums / cnt.clamp_min(1), cent[k])
            dec = cent[torch.arange(M_), codes_].reshape(len(codes_), -1)
            with torch.no_grad():
                module.sub_embeddings.copy_(cent * (a.init_centroids / dec.norm(dim=1).mean()))
            module.invalidate_cache()
    if a.ptq:
        from urecjpq_plugin.compress import quantize_model
        U0, I0 = torch.load(a.ptq)
        with torch.no_grad():
            model.user_embedding.weight.copy_(U0); model.item_embedding.weight.copy_(I0)
        quantize_model(model, {"user": nu, "item": ni}, 16, 256, seed=0)
    if a.learned_scale:
        deg = np.concatenate([np.diff(train.tocsr().indptr), np.bincount(train.tocoo().col, minlength=ni)])
        b = np.floor(np.log2(np.maximum(deg, 1))).astype(np.int64); nb = int(b.max()) + 1
        b[nu:] += nb  # items' buckets apart from users'
        model.bucket = torch.from_numpy(b); model.log_scale = nn.Parameter(torch.zeros(2 * nb))
    if a.grad_gate:
        du = np.diff(train.tocsr().indptr).astype(np.float64); di = np.bincount(train.tocoo().col, minlength=ni).astype(np.float64)
        gates = [(d / (d + a.grad_gate * d.mean())) ** a.gate_power for d in (du, di)]
        model.grad_gate = torch.from_numpy(np.concatenate(gates)).float()
    if a.row_norm_grad:
        model.row_v = torch.zeros(nu + ni); model.row_t = 0; model.row_beta = a.row_norm_grad; model.row_power = a.row_power
    if a.fixed:
        g = torch.Generator().manual_seed(a.seed + 7)
        std = (2.0 / (nu + 64)) ** 0.5, (2.0 / (ni + 64)) ** 0.5
        model.fixed = a.fixed * torch.cat([torch.randn(nu, 64, generator=g) * std[0], torch.randn(ni, 64, generator=g) * std[1]])
    if a.fixed and a.fixed_learned:
        model.fixed_log_scale = nn.Parameter(torch.zeros(()))
    if a.unit_rows:
        model.unit_log_scale = nn.Parameter(torch.full((2,), float(np.log(a.unit_rows))))
    if a.private_top:
        du = np.diff(train.tocsr().indptr); di = np.bincount(train.tocoo().col, minlength=ni)
        idx = [np.argsort(-d, kind="stable")[:a.private_top] + off
               for side, d, off in (("user", du, 0), ("item", di, nu)) if side in a.private_sides.split("+")]
        model.private_idx = torch.from_numpy(np.concatenate(idx)).long()
        model.private = nn.Parameter(torch.zeros(len(model.private_idx), 64))
    L = norm_adj(train)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    tr = train.tocoo(); U = torch.from_numpy(tr.row).long(); I = torch.from_numpy(tr.col).long(); n = len(U)
    neg_p = None
    if a.neg_power:
        neg_p = torch.from_numpy(np.bincount(train.tocoo().col, minlength=ni).astype(np.float64) ** a.neg_power).float()
    gen = torch.Generator().manual_seed(a.seed); best, best_ep = -1, 0; t0 = time.time()
    if a.ptq:  # the start itself, as epoch -1
        with torch.no_grad(): uw, iw = propagate(model, L, a.layers, nu)
        r, nd, _ = evaluate(uw, iw, train, valid); best, best_ep, state = r, -1, (uw.clone(), iw.clone())
        print(f"ep -1 valid R@20 {r:.4f} N@20 {nd:.4f} norm u {uw.norm(dim=1).mean():.3f} i {iw.norm(dim=1).mean():.3f}", flush=True)
    for ep in range(a.epochs):
        model.train(); perm = torch.randperm(n, generator=gen); neg_all = (torch.randint(0, ni, (n,), generator=gen) if neg_p is None
                                                             else torch.multinomial(neg_p, n, replacement=True, generator=gen)); tot = 0
        for s in range(0, n, 2048):
            idx = perm[s:s + 2048]; u, i, j = U[idx], I[idx], neg_all[idx]
            ue_all, ie_all = propagate(model, L, a.layers, nu)
            ue, pe, ne = ue_all[u], ie_all[i], ie_all[j]
            loss = -F.logsigmoid((ue * pe).sum(-1) - (ue * ne).sum(-1)).mean()
            ego = model.user_embedding(u).norm(2).pow(2) + model.item_embedding(i).norm(2).pow(2) + model.item_embedding(j).norm(2).pow(2)
            loss = loss + a.reg * ego / len(idx)
            opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item() * len(idx)
        model.eval()
        with torch.no_grad(): uw, iw = propagate(model, L, a.layers, nu)
        r, nd, _ = evaluate(uw, iw, train, valid)
        if not a.quiet:
            norms = f"norm u {uw.norm(dim=1).mean():.3f} i {iw.norm(dim=1).mean():.3f}"  # final (propagated) rows
            print(f"ep {ep} loss {tot/n:.4f} valid R@20 {r:.4f} N@20 {nd:.4f} {norms} ({time.time()-t0:.0f}s)", flush=True)
        if r > best:
            best, best_ep, state = r, ep, (uw.clone(), iw.clone())
            if a.save:
                with torch.no_grad():
                    torch.save((model.user_embedding.weight.detach().clone(), model.item_embedding.weight.detach().clone()), a.save)
        elif ep - best_ep >= a.patience: break
    tr_, tn, _ = evaluate(state[0], state[1], train + valid, test)
    extra = {"log_scale": [round(v, 3) for v in model.log_scale.tolist()]} if a.learned_scale else {}
    if getattr(model, "fixed_log_scale", None) is not None:
        extra["fixed_scale"] = round(model.fixed_log_scale.exp().item(), 3)
    print(json.dumps(dict(args=vars(a), **extra, best_ep=best_ep, valid=best, test_recall=tr_, test_ndcg=tn)))

if __name__ == "__main__":
    main()
