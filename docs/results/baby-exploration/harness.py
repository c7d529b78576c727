"""Fast BPR harness on an MMRec-format dataset, mimicking RecBole defaults (Adam 1e-3, batch 2048, xavier)."""
import argparse, time, json, sys
import numpy as np, scipy.sparse as sp, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "../../.."))
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.codes import svd_codes, kmeans_codes

def load(path):
    a = np.loadtxt(path, skiprows=1, dtype=np.int64)
    u, i, lab = a[:, 0], a[:, 1], a[:, 4]
    nu, ni = u.max() + 1, i.max() + 1
    mats = [sp.csr_matrix((np.ones((lab == s).sum(), np.float32), (u[lab == s], i[lab == s])), shape=(nu, ni)) for s in (0, 1, 2)]
    for m in mats: m.data[:] = 1
    return mats

def evaluate(user_w, item_w, train, target, k=20):
    users = np.unique(target.nonzero()[0])
    rec, ndcg = [], []
    disc = 1 / np.log2(np.arange(2, k + 2))
    tops = []
    with torch.no_grad():
        for s in range(0, len(users), 4096):
            b = users[s:s + 4096]
            sc = user_w[torch.from_numpy(b)] @ item_w.T
            tr = train[b].tocoo()
            sc[torch.from_numpy(tr.row).long(), torch.from_numpy(tr.col).long()] = -1e9
            top = sc.topk(k).indices.numpy()
            tops.append(top)
            t = target[b]
            for r in range(len(b)):
                truth = t.indices[t.indptr[r]:t.indptr[r + 1]]
                hit = np.isin(top[r], truth)
                rec.append(hit.sum() / len(truth))
                idcg = disc[:min(len(truth), k)].sum()
                ndcg.append((hit * disc).sum() / idcg)
    return float(np.mean(rec)), float(np.mean(ndcg)), np.concatenate(tops)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../../../../shared/datasets/baby/baby.inter")
    p.add_argument("--mode", default="full")
    p.add_argument("--codes", default="svd")
    p.add_argument("--targets", default="user,item")
    p.add_argument("--M", type=int, default=16); p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--epochs", type=int, default=40); p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=2020); p.add_argument("--d", type=int, default=64)
    p.add_argument("--opt", default="adam")
    p.add_argument("--quiet", action="store_true"); p.add_argument("--save"); p.add_argument("--init", default="table")
    a = p.parse_args()
    torch.manual_seed(a.seed); np.random.seed(a.seed); torch.set_num_threads(1)
    train, valid, test = load(a.data)
    nu, ni = train.shape
    user = nn.Embedding(nu, a.d); item = nn.Embedding(ni, a.d)
    nn.init.xavier_normal_(user.weight); nn.init.xavier_normal_(item.weight)
    if a.mode != "full":
        import codes_exp
        ucodes, icodes = codes_exp.make2(a.codes, train, a.M, a.ksub, a.seed, a.d)
        tg = a.targets.split(",")
        cents = getattr(codes_exp, "CENTROIDS", None)
        if "user" in tg: user = JPQEmbedding.from_centroids(ucodes, cents[0]) if a.init == "centroids" else JPQEmbedding.from_table(user.weight, ucodes, a.ksub)
        if "item" in tg: item = JPQEmbedding.from_centroids(icodes, cents[1]) if a.init == "centroids" else JPQEmbedding.from_table(item.weight, icodes, a.ksub)
        if a.mode != "jpq":
            import train_exp; user, item = train_exp.wrap(a.mode, user, item, train)
    params = list(user.parameters()) + list(item.parameters())
    opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adamw": torch.optim.AdamW}[a.opt](params, lr=a.lr, weight_decay=a.wd)
    tr = train.tocoo(); U = torch.from_numpy(tr.row).long(); I = torch.from_numpy(tr.col).long()
    n = len(U); best, best_ep, hist = -1, 0, []
    gen = torch.Generator().manual_seed(a.seed)
    trainset = set(zip(tr.row.tolist(), tr.col.tolist()))
    t0 = time.time()
    if a.init == "centroids":
        with torch.no_grad(): r0 = evaluate(user.weight.detach(), item.weight.detach(), train, valid)
        print(f"init valid R@20 {r0[0]:.4f} N@20 {r0[1]:.4f}")
    for ep in range(a.epochs):
        perm = torch.randperm(n, generator=gen); tot = 0
        neg_all = torch.randint(0, ni, (n,), generator=gen)
        for s in range(0, n, 2048):
            idx = perm[s:s + 2048]; u, i, j = U[idx], I[idx], neg_all[idx]
            ue = user(u); pe = item(i); ne = item(j)
            loss = -F.logsigmoid((ue * pe).sum(-1) - (ue * ne).sum(-1)).mean()
            opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item() * len(idx)
        with torch.no_grad():
            uw, iw = user.weight.detach(), item.weight.detach()
        r, nd, tops = evaluate(uw, iw, train, valid)
        pop = np.asarray(train.sum(0)).ravel(); top100 = np.argsort(-pop)[:100]
        popshare = np.isin(tops, top100).mean(); cov = len(np.unique(tops)) / ni
        hist.append(dict(ep=ep, loss=tot / n, recall=r, ndcg=nd, pop=popshare, cov=cov))
        if not a.quiet: print(f"ep {ep} loss {tot/n:.4f} valid R@20 {r:.4f} N@20 {nd:.4f} pop100 {popshare:.3f} cov {cov:.3f} ({time.time()-t0:.0f}s)", flush=True)
        if r > best: best, best_ep = r, ep; state = (uw.clone(), iw.clone())
        elif ep - best_ep >= a.patience: break
    if a.save: torch.save(state, a.save)
    tr_, tn, _ = evaluate(state[0], state[1], train + valid, test)
    print(json.dumps(dict(args=vars(a), best_ep=best_ep, valid=best, test_recall=tr_, test_ndcg=tn)))

if __name__ == "__main__":
    main()
