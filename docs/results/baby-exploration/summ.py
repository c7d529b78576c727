import json, collections, numpy as np, sys
rs = collections.defaultdict(list)
for l in open(sys.argv[1]):
    r = json.loads(l)
    try: o = json.loads(r["out"])
    except Exception: print(r); continue
    rs[r["name"]].append((o["test_recall"], o["test_ndcg"], o["best_ep"], o["valid"]))
full = rs.get("full")
base = np.mean([x[0] for x in full]) if full else None
basen = np.mean([x[1] for x in full]) if full else None
for n, v in rs.items():
    a = np.array(v)
    print(f"{n:18s} n={len(v)} R {a[:,0].mean():.4f}±{a[:,0].std():.4f} N {a[:,1].mean():.4f}±{a[:,1].std():.4f} V {a[:,3].mean():.4f} ep {a[:,2].astype(int).tolist()}", "" if base is None else f"dR {100*(a[:,0].mean()/base-1):+.1f}% dN {100*(a[:,1].mean()/basen-1):+.1f}%")
