"""The degree (evidence) scale: per-ID row scales from the training interactions (jpq_degree_scale)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, JPQEmbedding, apply_jpq, jpq_state_dict, load_jpq
from urecjpq_plugin.assign import DEGREE_SCALE, degree_scales
from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.topk import topk_from_codes


def sparse_matrix(n_users=300, n_items=200, per_user=3, seed=0):
    """Long-tailed and sparse (3 interactions per user): the regime the scale is for."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = np.concatenate([rng.choice(n_items, per_user, replace=False, p=popularity / popularity.sum())
                           for _ in range(n_users)])
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


def dense_matrix(n_users=100, n_items=80, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < 0.5).astype(np.float32))


class MF(nn.Module):
    def __init__(self, n_users, n_items, d=16):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)


def scaled_module(n=60, d=8, M=4, ksub=16, padding_idx=None):
    emb = JPQEmbedding(random_codes(n, M, ksub, seed=1), ksub, d, padding_idx=padding_idx)
    scale = torch.rand(n, generator=torch.Generator().manual_seed(0))
    emb.set_row_scale(scale)
    return emb, emb.row_scale.float() / 255


def test_every_read_of_a_scaled_table_is_the_scaled_decode():
    emb, scale = scaled_module(padding_idx=0)
    plain = emb.decode(emb.codes)
    plain[0] = 0
    expected = plain * scale.unsqueeze(1)
    assert torch.allclose(emb.weight, expected)
    ids = torch.tensor([[3, 0, 59], [7, 7, 1]])
    assert torch.allclose(emb(ids), expected[ids])
    with torch.no_grad():
        assert torch.allclose(emb(ids), expected[ids])
    q = torch.randn(5, 8)
    assert torch.allclose(emb.score(q), q @ expected.T, atol=1e-5)
    for method in ("lut", "matmul"):
        values, indices = topk_from_codes(q, emb.sub_embeddings, emb.codes, 4, padding_idx=0, method=method,
                                          row_scale=scale)
        best = (q @ expected.T).index_fill(1, torch.tensor([0]), float("-inf")).topk(4)
        assert torch.allclose(values, best.values, atol=1e-5) and torch.equal(indices, best.indices)
    values, indices = emb.topk(q, 4)
    assert torch.equal(indices, (q @ expected.T).index_fill(1, torch.tensor([0]), float("-inf")).topk(4).indices)


def test_gradient_flows_through_the_scale_and_a_zero_scale_row_gets_none():
    emb = JPQEmbedding(torch.tensor([[0, 1], [2, 3]]), ksub=4, embedding_dim=4)
    emb.set_row_scale(torch.tensor([0.0, 1.0]))
    emb(torch.tensor([0])).sum().backward()
    assert emb.sub_embeddings.grad.abs().sum() == 0
    emb(torch.tensor([1])).sum().backward()
    assert emb.sub_embeddings.grad[0, 2].abs().sum() > 0


def test_bad_row_scales_are_refused():
    emb = JPQEmbedding(torch.tensor([[0, 1], [2, 3]]), ksub=4, embedding_dim=4)
    with pytest.raises(JPQConfigError, match="shape"):
        emb.set_row_scale(torch.ones(3))
    with pytest.raises(JPQConfigError, match=r"\[0, 1\]"):
        emb.set_row_scale(torch.tensor([0.5, 1.5]))
    with pytest.raises(JPQConfigError, match=r"\[0, 1\]"):
        emb.set_row_scale(torch.tensor([0.5, float("nan")]))


def test_degree_scales_follow_the_formula_and_auto_follows_density():
    sparse = sparse_matrix()
    scales = degree_scales(JPQConfig(), sparse)  # auto: sparse -> on
    n = torch.from_numpy(np.asarray(sparse.sum(0)).ravel().astype(np.float32))
    assert torch.allclose(scales["item"], torch.sqrt(n / (n + DEGREE_SCALE * n.mean())))
    assert scales["user"].shape == (300,) and scales["item"].shape == (200,)
    assert degree_scales(JPQConfig(), dense_matrix()) == {}  # auto: dense -> off
    assert degree_scales(JPQConfig(degree_scale=0), sparse) == {}
    assert set(degree_scales(JPQConfig(degree_scale=1.0), dense_matrix())) == {"user", "item"}


@pytest.mark.parametrize("bad", [-1, float("nan"), "often", True])
def test_bad_degree_scale_option_is_refused_in_one_line(bad):
    with pytest.raises(JPQConfigError, match="jpq_degree_scale") as err:
        JPQConfig.from_mapping({"jpq_degree_scale": bad})
    assert "\n" not in str(err.value)


def test_apply_jpq_on_sparse_data_gives_rarely_seen_ids_shorter_rows():
    # Without the scale every ID decodes from shared sub-embeddings at the same norm whatever its
    # evidence: the drift measured on Amazon Baby. With it, a row's norm follows its degree.
    inter = sparse_matrix()
    model = MF(300, 200)
    apply_jpq(model, JPQConfig(M=4, ksub=16), counts={"user": 300, "item": 200}, interactions=inter)
    degree = np.asarray(inter.sum(0)).ravel()
    norms = model.item_embedding.weight.detach().norm(dim=1).numpy()
    rare, popular = degree <= np.quantile(degree, 0.25), degree >= np.quantile(degree, 0.9)
    assert norms[rare].mean() < 0.6 * norms[popular].mean()
    unscaled = MF(300, 200)
    apply_jpq(unscaled, JPQConfig(M=4, ksub=16, degree_scale=0), counts={"user": 300, "item": 200}, interactions=inter)
    assert unscaled.item_embedding.row_scale is None


def test_row_scale_survives_both_checkpoint_paths():
    inter = sparse_matrix()
    model = MF(300, 200)
    apply_jpq(model, JPQConfig(M=4, ksub=16), counts={"user": 300, "item": 200}, interactions=inter)
    # the plugin's own state
    fresh = MF(300, 200)
    load_jpq(fresh, jpq_state_dict(model))
    model.eval(), fresh.eval()  # no split dropout
    assert torch.equal(fresh.item_embedding.row_scale, model.item_embedding.row_scale)
    assert torch.allclose(fresh.item_embedding.weight, model.item_embedding.weight)
    # a whole state_dict into a table built without a scale (placeholder codes at checkpoint load)
    bare = JPQEmbedding(torch.zeros(200, 4, dtype=torch.uint8), 16, 16)
    prefix = "item_embedding."
    bare.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    bare.eval()
    assert torch.allclose(bare.weight, model.item_embedding.weight)
    # codes, scale levels, float32 sub-embeddings and the unit rows' length (auto: on for this sparse data)
    assert bare.compact_bytes() == 200 * 4 + 200 + 16 * 16 * 4 + 4


def test_hosts_apply_auto_only_to_dot_product_models():
    # NGCF transforms the rows in its layers and lost accuracy with the scale on Baby, LightGCN on TikTok; BPR gained.
    from urecjpq_plugin.hosts.base import row_scales_source
    from urecjpq_plugin.hosts.recbole.hook import DEGREE_SCALE_MODELS

    BPR = type("BPR", (nn.Module,), {})
    NGCF = type("NGCF", (nn.Module,), {})
    LightGCN = type("LightGCN", (nn.Module,), {})
    Wrapped = type("BPR", (BPR,), {})  # the hosts' same-named subclass
    inter = sparse_matrix()
    for model, scaled in ((BPR(), True), (Wrapped(), True), (NGCF(), False), (LightGCN(), False)):
        scales = row_scales_source(JPQConfig(), lambda: inter, model, DEGREE_SCALE_MODELS)()
        assert bool(scales) is scaled, type(model).__name__
    assert row_scales_source(JPQConfig(degree_scale=3), lambda: inter, NGCF(), DEGREE_SCALE_MODELS)()  # asked for
    # MMRec's MGCN (a LightGCN view of the rows) gained with the scale on TikTok; its other models keep it off
    from urecjpq_plugin.hosts.mmrec.hook import DEGREE_SCALE_MODELS as MMREC_MODELS

    MGCN, FREEDOM = type("MGCN", (nn.Module,), {}), type("FREEDOM", (nn.Module,), {})
    for model, scaled in ((MGCN(), True), (FREEDOM(), False), (LightGCN(), True)):
        assert bool(row_scales_source(JPQConfig(), lambda: inter, model, MMREC_MODELS)()) is scaled
