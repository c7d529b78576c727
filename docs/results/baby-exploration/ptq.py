"""Post-training quantisation of trained uncompressed tables (no training after): what M x ksub can hold.

    python ptq.py --tables <file saved by harness.py/harness_gcn.py --save> --data <baby.inter> [--gcn]

Each table is product-quantised (per-split k-means, the plugin's `quantize_table`) at several (M, ksub);
the quantised ego tables (suffix u / i: only the user / item table) are scored as trained (LightGCN: propagated first) on the test split, against
the unquantised tables. Prints one JSON line per setting.
"""
import argparse, json
from types import SimpleNamespace
import torch
from harness import load, evaluate
from urecjpq_plugin.compress import quantize_table
from urecjpq_plugin.pq import decode_rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tables", required=True); p.add_argument("--data", required=True)
    p.add_argument("--gcn", action="store_true"); p.add_argument("--layers", type=int, default=2)
    p.add_argument("--settings", default="16x256,16x256u,16x256i,16x1024,8x256,32x256")  # suffix u/i: that side only
    a = p.parse_args()
    torch.set_num_threads(1)
    train, valid, test = load(a.data); nu = train.shape[0]
    U, I = torch.load(a.tables)

    if a.gcn:
        import harness_gcn
        adj = harness_gcn.norm_adj(train)  # once: every setting propagates over the same graph

    def score(u, i):
        if a.gcn:
            tables = SimpleNamespace(user_embedding=SimpleNamespace(weight=u), item_embedding=SimpleNamespace(weight=i))
            u, i = harness_gcn.propagate(tables, adj, a.layers, nu)
        r, n, _ = evaluate(u, i, train + valid, test)
        return r, n

    def quantised(table, M, ksub):
        codes, centroids = quantize_table(table, M, ksub, seed=0)
        return decode_rows(centroids, codes.long())

    base = score(U, I)
    print(json.dumps(dict(setting="trained", test_recall=base[0], test_ndcg=base[1])), flush=True)
    for s in a.settings.split(","):
        side = s[-1] if s[-1] in "ui" else ""
        M, ksub = map(int, s.rstrip("ui").split("x"))
        q = [quantised(t, M, ksub) if side in ("", name) else t for name, t in (("u", U), ("i", I))]
        r, n = score(*q)
        print(json.dumps(dict(setting=s, test_recall=r, test_ndcg=n, rel_recall=r / base[0] - 1, rel_ndcg=n / base[1] - 1)), flush=True)


if __name__ == "__main__":
    main()
