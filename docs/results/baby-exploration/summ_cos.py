import json, sys, collections, numpy as np
rows = collections.defaultdict(list)
for f in sys.argv[1:]:
    for l in open(f):
        d = json.loads(l)
        try: o = json.loads(d["out"])
        except Exception: print("FAIL", d["name"], d["out"][-200:]); continue
        key = d["name"].rsplit("_s", 1)[0]
        rows[key].append((o["test_recall"], o["test_ndcg"], o["best_ep"], d.get("secs")))
for k, v in rows.items():
    a = np.array(v)
    print(f"{k:30s} n={len(v)} R@20 {a[:,0].mean():.4f}±{a[:,0].std():.4f} N@20 {a[:,1].mean():.4f} ep {list(a[:,2].astype(int))} secs {list(a[:,3])}")
