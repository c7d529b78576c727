"""Unit rows (jpq_unit_rows): decoded rows at unit length times one learned length per table."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, JPQEmbedding, apply_jpq, jpq_state_dict, load_jpq
from urecjpq_plugin.assign import resolve_unit_rows
from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.export import ExportError, to_faiss_index
from urecjpq_plugin.topk import topk_from_codes


class MF(nn.Module):
    def __init__(self, n_users=40, n_items=30, d=16):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)


def unit_module(n=60, d=8, M=4, ksub=16, padding_idx=None, length=2.5):
    emb = JPQEmbedding(random_codes(n, M, ksub, seed=1), ksub, d, padding_idx=padding_idx)
    emb.set_unit_rows(length)
    return emb


def test_every_read_of_a_unit_row_table_is_the_normalised_decode():
    emb = unit_module(padding_idx=0)
    raw = emb._gather(emb.codes, None).detach()
    expected = 2.5 * raw / raw.norm(dim=1, keepdim=True)
    expected[0] = 0
    assert torch.allclose(emb.weight, expected, atol=1e-6)
    assert torch.allclose(emb.weight[1:].norm(dim=1), torch.full((59,), 2.5))
    ids = torch.tensor([[3, 0, 59], [7, 7, 1]])
    assert torch.allclose(emb(ids), expected[ids], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(emb(ids), expected[ids], atol=1e-6)
    q = torch.randn(5, 8)
    best = (q @ expected.T).index_fill(1, torch.tensor([0]), float("-inf")).topk(4)
    assert torch.allclose(emb.score(q)[:, 1:], (q @ expected.T)[:, 1:], atol=1e-5)
    with torch.no_grad():
        multipliers = emb._multipliers(torch.float32)
    for method in ("lut", "matmul"):  # the code paths that never decode the table
        values, indices = topk_from_codes(q, emb.sub_embeddings, emb.codes, 4, padding_idx=0, method=method,
                                          row_scale=multipliers)
        assert torch.allclose(values, best.values, atol=1e-5) and torch.equal(indices, best.indices)
    assert torch.equal(emb.topk(q, 4)[1], best.indices)


def test_unit_rows_compose_with_the_degree_scale():
    emb = unit_module()
    scale = torch.linspace(0.1, 1.0, 60)
    emb.set_row_scale(scale)
    levels = emb.row_scale.float() / 255
    assert torch.allclose(emb.weight.norm(dim=1), 2.5 * levels, atol=1e-5)
    q = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(emb.score(q), q @ emb.weight.T, atol=1e-5)


def test_the_length_is_learned_and_the_norms_are_not_free():
    emb = unit_module(length=1.0)
    assert emb.trainable_count() == emb.sub_embeddings.numel() + 1
    opt = torch.optim.Adam(emb.parameters(), lr=0.05)
    for _ in range(20):  # pushing every row outwards can only grow the one shared length
        opt.zero_grad()
        (-emb(torch.arange(60)).sum(1).pow(2).mean()).backward()
        opt.step()
    norms = emb.weight.detach().norm(dim=1)
    assert emb.row_log_length.item() > 0.5
    assert torch.allclose(norms, torch.full_like(norms, math.exp(emb.row_log_length.item())), rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "long"])
def test_bad_lengths_and_options_are_refused(bad):
    emb = JPQEmbedding(torch.tensor([[0, 1], [2, 3]]), ksub=4, embedding_dim=4)
    with pytest.raises(JPQConfigError, match="length"):
        emb.set_unit_rows(bad)
    assert emb.row_log_length is None


def test_the_option_is_read_from_host_configs_and_checked():
    assert JPQConfig.from_mapping({"jpq_unit_rows": "true"}).unit_rows is True
    assert JPQConfig.from_mapping({"jpq_unit_rows": False}).unit_rows is False
    assert JPQConfig.from_mapping({}).unit_rows == "auto" == JPQConfig.from_mapping({"jpq_unit_rows": "Auto"}).unit_rows
    with pytest.raises(JPQConfigError, match="jpq_unit_rows='sometimes' is invalid; use true, false or 'auto'") as err:
        JPQConfig.from_mapping({"jpq_unit_rows": "sometimes"})
    assert "\n" not in str(err.value)
    with pytest.raises(JPQConfigError, match="jpq_unit_rows"):
        JPQConfig(unit_rows="yes")


def test_apply_jpq_gives_unit_rows_and_both_checkpoint_paths_keep_the_length():
    model = MF()
    report = apply_jpq(model, JPQConfig(M=4, ksub=8, unit_rows=True, code_assign="random"),
                       counts={"user": 40, "item": 30})
    for table in (model.user_embedding, model.item_embedding):
        assert table.row_log_length is not None and table.row_log_length.requires_grad
    assert sum(r.params_after for r in report.tables) == 2 * (8 * 16 + 1)
    with torch.no_grad():
        model.item_embedding.row_log_length.fill_(0.7)
    model.eval()
    fresh = MF()  # the plugin's own state
    load_jpq(fresh, jpq_state_dict(model))
    fresh.eval()
    assert torch.allclose(fresh.item_embedding.weight, model.item_embedding.weight)
    assert fresh.item_embedding.row_log_length.requires_grad
    bare = JPQEmbedding(torch.zeros(30, 4, dtype=torch.uint8), 8, 16)  # a whole state_dict into a plain-built table
    prefix = "item_embedding."
    bare.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    bare.eval()
    assert torch.allclose(bare.weight, model.item_embedding.weight)
    plain = MF()  # auto without training interactions: nothing says the data is sparse
    apply_jpq(plain, JPQConfig(M=4, ksub=8, code_assign="random"), counts={"user": 40, "item": 30})
    assert plain.item_embedding.row_log_length is None


def sparse_matrix(n_users=300, n_items=200, per_user=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


def test_auto_follows_density_and_an_explicit_choice_stands():
    sparse = sparse_matrix()
    dense = sp.csr_matrix((np.random.default_rng(0).random((100, 80)) < 0.5).astype(np.float32))
    assert resolve_unit_rows(JPQConfig(), sparse) is True
    assert resolve_unit_rows(JPQConfig(), dense) is False
    assert resolve_unit_rows(JPQConfig(), None) is False
    assert resolve_unit_rows(JPQConfig(unit_rows=True), dense) is True
    assert resolve_unit_rows(JPQConfig(unit_rows=False), sparse) is False
    model = MF(300, 200)
    apply_jpq(model, JPQConfig(M=4, ksub=16), counts={"user": 300, "item": 200}, interactions=sparse)
    assert model.user_embedding.row_log_length is not None and model.item_embedding.row_log_length is not None


def test_hosts_apply_auto_only_to_the_models_measured():
    from urecjpq_plugin.hosts.base import unit_rows_for_model
    from urecjpq_plugin.hosts.mmrec.hook import UNIT_ROW_MODELS as MMREC_MODELS
    from urecjpq_plugin.hosts.recbole.hook import UNIT_ROW_MODELS

    inter = sparse_matrix()
    BPR, NGCF = type("BPR", (nn.Module,), {}), type("NGCF", (nn.Module,), {})
    Wrapped = type("BPR", (BPR,), {})  # the hosts' same-named subclass
    for models in (UNIT_ROW_MODELS, MMREC_MODELS):
        for model, on in ((BPR(), True), (Wrapped(), True), (NGCF(), False)):
            assert unit_rows_for_model(JPQConfig(), lambda: inter, model, models).unit_rows is on
        assert unit_rows_for_model(JPQConfig(unit_rows=True), lambda: inter, NGCF(), models).unit_rows is True


def test_faiss_export_refuses_unit_rows():
    pytest.importorskip("faiss")
    with pytest.raises(ExportError, match="jpq_unit_rows"):
        to_faiss_index(unit_module())
