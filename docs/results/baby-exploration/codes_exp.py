import numpy as np, scipy.sparse as sp, torch, sys
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "../../.."))
from urecjpq_plugin.codes import svd_codes, kmeans_codes, random_codes
from urecjpq_plugin.rsvd import randomized_svd

UNIT = None

def make(kind, train, M, ksub, seed, d):
    if kind == "svd":
        return svd_codes(train, M, ksub, seed)
    if kind == "random":
        return random_codes(train.shape[0], M, ksub, seed), random_codes(train.shape[1], M, ksub, seed + 1)
    raise SystemExit(kind)

def _pq(vectors, M, ksub, seed):
    c, cent = kmeans_codes(torch.as_tensor(vectors, dtype=torch.float32), M, ksub, seed)
    from urecjpq_plugin.distinct import make_distinct
    c = c.numpy().copy(); make_distinct(c, ksub, seed)
    return torch.from_numpy(c), cent

def _unit(v, M, per_split):
    """Rows (or, per_split, each split's sub-vector) scaled to unit norm: codes from directions only."""
    v = np.asarray(v, dtype=np.float32)
    if per_split:
        w = v.reshape(len(v), M, -1)
        return (w / np.maximum(np.linalg.norm(w, axis=2, keepdims=True), 1e-12)).reshape(len(v), -1)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

def make2(kind, train, M, ksub, seed, d):
    global CENTROIDS
    if kind[0] in "uv" and "svd" in kind:  # u<kind>: unit rows before PQ; v<kind>: unit sub-vectors per split
        per_split = kind[0] == "v"
        global UNIT
        UNIT = (M, per_split)
        try:
            return make2(kind[1:], train, M, ksub, seed, d)
        finally:
            UNIT = None
    if kind.endswith("_deg"):  # last split = degree bin
        uc, ic = make2(kind[:-4], train, M, ksub, seed, d)
        from urecjpq_plugin.codes import quantile_bin
        from urecjpq_plugin.distinct import make_distinct
        out = []
        for c, deg, sd in ((uc, np.asarray(train.sum(1)).ravel(), seed), (ic, np.asarray(train.sum(0)).ravel(), seed + 1)):
            c = c.numpy().copy()
            c[:, -1] = quantile_bin(np.log1p(deg).astype(np.float32)[:, None], ksub, sd).numpy()[:, 0]
            make_distinct(c, ksub, sd)
            out.append(torch.from_numpy(c))
        return out[0], out[1]
    if kind.startswith("file:"):
        uw, iw = torch.load(kind[5:])
        (uc, ucent), (ic, icent) = _pq(uw, M, ksub, seed), _pq(iw, M, ksub, seed + 1)
        CENTROIDS = (ucent, icent)
        return uc, ic
    if kind.startswith("pqisvd"):  # interleaved: split k holds components k, k+M, k+2M, ...
        k = int(kind[6:] or d)
        U, s, Vt = randomized_svd(train.astype(np.float32), k, seed)
        uv, iv = U * np.sqrt(s), Vt.T * np.sqrt(s)
        perm = [c + M * j for c in range(M) for j in range(k // M)]
        uv, iv = np.ascontiguousarray(uv[:, perm]), np.ascontiguousarray(iv[:, perm])
        (uc, ucent), (ic, icent) = _pq(uv, M, ksub, seed), _pq(iv, M, ksub, seed + 1)
        CENTROIDS = (ucent, icent)
        return uc, ic
    if kind.startswith("pqnsvd") or kind.startswith("pqsvd"):  # pqsvd<k>: k-dim SVD scaled by sqrt(s), PQ
        body = kind.lstrip("pqnsvd")
        n_iter = 5
        if "i" in body: body, n_iter = body.split("i"); n_iter = int(n_iter)
        k = int(body or d)
        X = train.astype(np.float32)
        if kind.startswith("pqnsvd"):
            du = np.asarray(X.sum(1)).ravel(); di = np.asarray(X.sum(0)).ravel()
            X = sp.diags(1/np.sqrt(np.maximum(du,1))) @ X @ sp.diags(1/np.sqrt(np.maximum(di,1)))
            X = X.tocsr().astype(np.float32)
        U, s, Vt = randomized_svd(X, k, seed, n_iter=n_iter)
        uv, iv = U * np.sqrt(s), Vt.T * np.sqrt(s)
        if UNIT:
            uv, iv = _unit(uv, *UNIT), _unit(iv, *UNIT)
        (uc, ucent), (ic, icent) = _pq(uv, M, ksub, seed), _pq(iv, M, ksub, seed + 1)
        CENTROIDS = (ucent, icent)
        return uc, ic
    return make(kind, train, M, ksub, seed, d)
