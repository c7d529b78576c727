"""Where a compressed LightGCN loses against the uncompressed one: test hits by the target item's and the user's
training degree. Reads the ego tables `harness_gcn.py --save` wrote (best validation epoch) for both runs.

    PYTHONPATH=. python diag_gcn_popularity.py --data <baby.inter> --tables full.pt compressed.pt
"""
import argparse, json
import numpy as np, torch
from harness import load
from harness_gcn import norm_adj, propagate_rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True); p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--layers", type=int, default=2); p.add_argument("--k", type=int, default=20)
    a = p.parse_args()
    train, valid, test = load(a.data); nu, ni = train.shape; L = norm_adj(train); seen = (train + valid).tocsr()
    ideg = np.bincount(train.tocoo().col, minlength=ni); udeg = np.diff(train.tocsr().indptr)
    ibin = np.digitize(ideg, [8, 16, 32, 64, 128]); ubin = np.digitize(udeg, [4, 6, 10])
    ilabels = ["<8", "8-15", "16-31", "32-63", "64-127", ">=128"]; ulabels = ["<4", "4-5", "6-9", ">=10"]
    t = test.tocsr(); users = np.unique(t.nonzero()[0])
    for path in a.tables:
        uw, iw = propagate_rows(torch.cat(torch.load(path)), L, a.layers, nu)
        hits_i = np.zeros(len(ilabels)); tot_i = np.zeros(len(ilabels)); rec_u = [[] for _ in ulabels]
        tops = []
        with torch.no_grad():
            for s in range(0, len(users), 4096):
                b = users[s:s + 4096]; sc = uw[torch.from_numpy(b)] @ iw.T
                sr = seen[b].tocoo(); sc[torch.from_numpy(sr.row).long(), torch.from_numpy(sr.col).long()] = -1e9
                top = sc.topk(a.k).indices.numpy(); tops.append(top)
                for r, u in enumerate(b):
                    truth = t.indices[t.indptr[u]:t.indptr[u + 1]]; hit = np.isin(truth, top[r])
                    np.add.at(tot_i, ibin[truth], 1); np.add.at(hits_i, ibin[truth], hit)
                    rec_u[ubin[u]].append(hit.sum() / len(truth))
        tops = np.concatenate(tops); pop100 = np.argsort(-ideg)[:100]
        out = {"tables": path, "recall@20": float(np.mean(np.concatenate([np.array(x) for x in rec_u]))),
               "test pairs by item degree": dict(zip(ilabels, tot_i.astype(int).tolist())),
               "hit rate by item degree": dict(zip(ilabels, np.round(hits_i / np.maximum(tot_i, 1), 4).tolist())),
               "recall by user degree": dict(zip(ulabels, [round(float(np.mean(x)), 4) for x in rec_u])),
               "top-100 share": round(float(np.isin(tops, pop100).mean()), 3),
               "coverage": round(len(np.unique(tops)) / ni, 3),
               "item norm by degree": {l: round(float(iw[ibin == k].norm(dim=1).mean()), 3) for k, l in enumerate(ilabels)}}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
