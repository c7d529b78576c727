"""Codes from a short LightGCN fit of the training pairs (jpq_code_assign: lightgcn_fit)."""

import numpy as np
import torch
import torch.nn.functional as F

from urecjpq_plugin import JPQConfig
from urecjpq_plugin.assign import assign_codes
from urecjpq_plugin.fit_codes import lightgcn_fit_rows, normalised_adjacency

from tests.test_assign import block_matrix


def test_normalised_adjacency_is_the_symmetric_degree_normalised_bipartite_graph():
    X = block_matrix(n_users=40, n_items=60, blocks=3)
    A = normalised_adjacency(X).toarray()
    degrees = np.concatenate([np.asarray(X.sum(1)).ravel(), np.asarray(X.sum(0)).ravel()])
    u, i = X.nonzero()
    assert np.allclose(A, A.T)
    assert np.allclose(A[u, 40 + i], 1 / np.sqrt(degrees[u] * degrees[40 + i]))
    assert (A != 0).sum() == 2 * X.nnz


def test_the_fit_learns_which_items_a_user_prefers():
    X = block_matrix(blocks=6)  # user u interacts only with items of block u % 6
    users, items = lightgcn_fit_rows(X, dim=16, seed=0, epochs=40)
    assert users.shape == (400, 16) and items.shape == (300, 16)
    scores = users @ items.T
    in_block = torch.from_numpy(np.arange(300)[None, :] % 6 == np.arange(400)[:, None] % 6)
    seen = torch.from_numpy(X.toarray() > 0)
    unseen_in_block, out_of_block = scores[in_block & ~seen], scores[~in_block]
    # AUC of the block's unseen items against the other blocks' items: 0.5 for an unfitted model
    auc = (unseen_in_block[:, None] > out_of_block[None, ::97]).float().mean()
    assert auc > 0.9


def test_lightgcn_fit_codes_group_ids_of_a_block_and_are_deterministic(caplog):
    X = block_matrix(blocks=4)
    config = JPQConfig(M=4, ksub=8, code_assign="lightgcn_fit", seed=1, dim=16)
    with caplog.at_level("INFO", logger="urecjpq_plugin"):
        codes = assign_codes(config, X)
    assert "LightGCN fit of the training pairs" in caplog.text
    assert torch.equal(codes["user"], assign_codes(config, X)["user"])
    for entity, n, block in (("user", 400, np.arange(400) % 4), ("item", 300, np.arange(300) % 4)):
        c = codes[entity]
        assert c.shape == (n, 4) and c.dtype == torch.uint8 and int(c.max()) < 8
        same = (c[:, None, :] == c[None, :, :]).float().mean(-1)  # fraction of splits two IDs share
        same_block = torch.from_numpy(block[:, None] == block[None, :])
        off_diagonal = ~torch.eye(n, dtype=torch.bool)
        assert same[same_block & off_diagonal].mean() > 3 * same[~same_block].mean()
    assert F.one_hot(codes["user"][:, 0].long(), 8).sum(0).min() > 0  # every sub-id of a split used


def test_mmrec_auto_gives_bm3_lightgcn_fit_codes_on_sparse_data_only():
    import scipy.sparse as sp
    from torch import nn

    from urecjpq_plugin.hosts.mmrec.hook import auto_codes_for_model

    rng = np.random.default_rng(0)
    sparse = sp.csr_matrix((rng.random((400, 300)) < 0.02).astype(np.float32))  # 3.4 interactions per ID
    dense = block_matrix()  # 17 per ID
    BM3, FREEDOM = type("BM3", (nn.Module,), {}), type("FREEDOM", (nn.Module,), {})
    auto = JPQConfig()
    assert auto_codes_for_model(auto, BM3(), lambda: sparse).code_assign == "lightgcn_fit"
    assert auto_codes_for_model(auto, type("BM3", (BM3,), {})(), lambda: sparse).code_assign == "lightgcn_fit"
    assert auto_codes_for_model(auto, BM3(), lambda: dense).code_assign == "auto"  # -> svd, as for every model
    assert auto_codes_for_model(auto, FREEDOM(), lambda: sparse).code_assign == "auto"  # -> svd_pq_cos
    asked = JPQConfig(code_assign="svd_pq_cos")
    assert auto_codes_for_model(asked, BM3(), lambda: sparse) is asked  # an explicit choice stands


def test_auto_keeps_svd_codes_above_the_fits_pair_limit_and_an_explicit_fit_warns(monkeypatch, caplog):
    import scipy.sparse as sp
    from torch import nn

    from urecjpq_plugin import fit_codes
    from urecjpq_plugin.hosts.mmrec import hook

    rng = np.random.default_rng(0)
    sparse = sp.csr_matrix((rng.random((400, 300)) < 0.02).astype(np.float32))
    monkeypatch.setattr(hook, "FIT_MAX_PAIRS", sparse.nnz - 1)
    BM3 = type("BM3", (nn.Module,), {})
    assert hook.auto_codes_for_model(JPQConfig(), BM3(), lambda: sparse).code_assign == "auto"  # -> svd_pq_cos
    monkeypatch.setattr(fit_codes, "FIT_MAX_PAIRS", sparse.nnz - 1)
    with caplog.at_level("WARNING", logger="urecjpq_plugin"):
        users, _ = lightgcn_fit_rows(sparse, dim=8, seed=0, epochs=1)
    assert f"lightgcn_fit on {sparse.nnz:,} training pairs" in caplog.text and users.shape == (400, 8)
