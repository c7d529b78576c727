"""MMRec host swap mechanics on small modules shaped like MMRec's models (no MMRec needed).

Each fake model's class carries the module-qualified name of the MMRec model whose table pattern
it copies, so the host's TABLE_SPECS select its tables exactly as for the real model.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.features import feature_id_codes, normalised_concat, pq_feature_table, user_mean_features
from urecjpq_plugin.hosts.mmrec import hook as mmrec
from urecjpq_plugin.hosts.mmrec import compat as mmrec_compat
from urecjpq_plugin.hosts.mmrec import runner as mmrec_run
from urecjpq_plugin.hosts.mmrec import tables as mmrec_tables
from urecjpq_plugin.hosts.mmrec.cli import LauncherError, overrides_from_argv
from urecjpq_plugin.inject import _REGISTRY, JPQTargetError, count_trainable, register_id_tables
from urecjpq_plugin.jpq import JPQEmbedding

N_USERS, N_ITEMS, DIM = 30, 40, 16


def interactions(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.2).astype(np.float32)
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1  # every user has an item
    return sp.csr_matrix(dense)


class FakeDataset:
    def get_user_num(self) -> int:
        return N_USERS

    def get_item_num(self) -> int:
        return N_ITEMS


class FakeLoader:
    """What MMRec's TrainDataLoader offers the models: ``dataset`` counts and the train matrix."""

    dataset = FakeDataset()

    def inter_matrix(self, form: str = "coo"):
        return interactions().asformat(form)


def config(**kw) -> dict:
    # split dropout off: these tests compare training-mode reads exactly (see test_split_dropout_reaches_tables)
    return {"jpq": True, "jpq_M": 4, "jpq_ksub": 8, "seed": 7, "jpq_split_dropout": 0.0, **kw}


def qualified(module: str, name: str):
    """Give a test class the module-qualified name of an MMRec model."""

    def decorate(cls):
        cls.__module__, cls.__qualname__, cls.__name__ = module, name, name
        return cls

    return decorate


@qualified("models.freedom", "FREEDOM")
class EmbeddingModel(nn.Module):
    """FREEDOM/BM3 pattern: Embedding tables read by id and through .weight, feature tables from_pretrained."""

    def __init__(self, text_trainable: bool = True):
        super().__init__()
        self.n_users, self.n_items = N_USERS, N_ITEMS
        self.user_embedding = nn.Embedding(N_USERS, DIM)
        self.item_id_embedding = nn.Embedding(N_ITEMS, DIM)
        self.t_feat = torch.randn(N_ITEMS, 24, generator=torch.Generator().manual_seed(1))
        self.text_embedding = nn.Embedding.from_pretrained(self.t_feat, freeze=not text_trainable)
        self.text_trs = nn.Linear(24, DIM)

    def forward(self, users, items):
        item = self.item_id_embedding.weight + self.text_trs(self.text_embedding.weight)
        return (self.user_embedding(users) * item[items]).sum(-1)


@qualified("models.vbpr", "VBPR")
class RawParameterModel(nn.Module):
    """VBPR/LayerGCN pattern: raw 2-D Parameters indexed and concatenated."""

    def __init__(self):
        super().__init__()
        self.u_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(N_USERS, DIM * 2)))
        self.i_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(N_ITEMS, DIM)))
        self.item_linear = nn.Linear(8, DIM)

    def forward(self, users, items):
        item = torch.cat((self.i_embedding, self.item_linear(torch.ones(N_ITEMS, 8))), -1)
        return (self.u_embedding[users, :] * item[items]).sum(-1)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding_dict = nn.ParameterDict(
            {
                "user_emb": nn.Parameter(nn.init.xavier_uniform_(torch.empty(N_USERS, DIM))),
                "item_emb": nn.Parameter(nn.init.xavier_uniform_(torch.empty(N_ITEMS, DIM))),
            }
        )

    def forward(self):
        return torch.cat([self.embedding_dict["user_emb"], self.embedding_dict["item_emb"]], 0)


@qualified("models.selfcfed_lgn", "SELFCFED_LGN")
class EncoderModel(nn.Module):
    """SELFCFED_LGN pattern: a ParameterDict inside an encoder submodule (LightGCN: at the top)."""

    def __init__(self):
        super().__init__()
        self.online_encoder = Encoder()
        self.predictor = nn.Linear(DIM, DIM)


class Preference(nn.Module):
    def __init__(self):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.rand(N_USERS, DIM)))


class EGCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.rand(N_USERS + N_ITEMS, DIM)))


@qualified("models.grcn", "GRCN")
class JointModel(nn.Module):
    """GRCN pattern: one table of users then items, plus per-user preference tables (text only here)."""

    def __init__(self):
        super().__init__()
        self.id_gcn = EGCN()
        self.t_gcn = Preference()
        self.model_specific_conf = nn.Parameter(torch.rand(N_USERS + N_ITEMS, 1))


@qualified("models.mmgcn", "MMGCN")
class UntrainedModel(nn.Module):
    """MMGCN pattern: ID tables that are plain tensors, never trained."""

    def __init__(self):
        super().__init__()
        self.id_embedding = torch.rand(N_USERS + N_ITEMS, DIM, requires_grad=True)
        self.linear = nn.Linear(DIM, DIM)


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


@qualified("models.mymodel", "MyModel")
class UserDefinedModel(nn.Module):
    """A user's own MMRec model: names the default rule does not take, a users-then-items table with padding."""

    def __init__(self):
        super().__init__()
        self.people = nn.Embedding(N_USERS, DIM)
        self.things = nn.Parameter(torch.randn(N_ITEMS, DIM))
        self.both = nn.Embedding(N_USERS + N_ITEMS, DIM, padding_idx=0)


def compress(model, **kw):
    return mmrec.compress_model(model, config(**kw), FakeLoader())


# -- ID tables ------------------------------------------------------------------------------
def test_embedding_tables_by_id_and_weight():
    model = EmbeddingModel()
    before = count_trainable(model)
    summary = compress(model)
    assert isinstance(model.user_embedding, JPQEmbedding) and isinstance(model.item_id_embedding, JPQEmbedding)
    assert {r.entity for r in summary["records"]} == {"user", "item"}
    assert isinstance(model.text_embedding, nn.Embedding)  # features are opt-in
    ids = torch.tensor([0, 5, 29])
    assert torch.equal(model.user_embedding(ids), model.user_embedding.weight[ids])
    assert count_trainable(model) < before
    out = model(ids, torch.tensor([1, 2, 3])).sum()
    out.backward()
    assert model.user_embedding.sub_embeddings.grad.abs().sum() > 0


def test_split_dropout_reaches_tables():
    model = EmbeddingModel()
    compress(model, jpq_split_dropout=0.3)
    assert model.user_embedding.split_dropout == model.item_id_embedding.split_dropout == 0.3


def test_raw_parameter_tables_become_properties():
    model = RawParameterModel()
    compress(model)
    assert "u_embedding" not in dict(model.named_parameters())
    assert model.u_embedding.shape == (N_USERS, 2 * DIM)  # decoded, same shape as before
    loss = model(torch.tensor([0, 1]), torch.tensor([2, 3])).sum()
    loss.backward()
    assert model.u_embedding_jpq.sub_embeddings.grad.abs().sum() > 0
    with pytest.raises(AttributeError, match="JPQ-compressed"):
        model.u_embedding = nn.Parameter(torch.zeros(N_USERS, 2 * DIM))


def test_nested_parameter_dict_entries():
    model = EncoderModel()
    compress(model)
    table = model.online_encoder.embedding_dict["user_emb"]
    assert table.shape == (N_USERS, DIM)
    assert isinstance(model.online_encoder.embedding_dict.user_emb_jpq, JPQEmbedding)
    model.online_encoder().sum().backward()
    assert model.online_encoder.embedding_dict.item_emb_jpq.sub_embeddings.grad is not None


def test_joint_user_item_table_keeps_separate_codebook_halves():
    model = JointModel()
    summary = compress(model)
    joint = model.id_gcn.id_embedding_jpq
    assert joint.ksub == 16  # 2 * jpq_ksub
    codes = joint.codes.long()
    assert codes[:N_USERS].max() < 8 and codes[N_USERS:].min() >= 8
    assert {r.entity for r in summary["records"]} == {"user+item", "user"}
    assert isinstance(model.t_gcn.preference_jpq, JPQEmbedding)  # per-user preference table
    assert "model_specific_conf" in dict(model.named_parameters())  # [n, 1] confidences stay
    model.id_gcn.id_embedding[:N_USERS].sum().backward()  # a users-only loss
    grad = joint.sub_embeddings.grad
    assert grad[:, :8].abs().sum() > 0 and grad[:, 8:].abs().sum() == 0


def test_user_only_target_leaves_items_and_joint_table():
    model = JointModel()
    compress(model, jpq_targets=["user"])
    assert isinstance(model.t_gcn.preference_jpq, JPQEmbedding)
    assert "id_gcn.id_embedding" in dict(model.named_parameters())


def test_untrained_plain_tensor_tables_get_a_clear_error():
    with pytest.raises(JPQTargetError, match="never trains"):
        compress(UntrainedModel())


def test_bad_dimension_fails_before_any_change():
    model = EmbeddingModel()
    with pytest.raises(JPQConfigError, match="not a multiple of jpq_M=5"):
        compress(model, jpq_M=5)
    assert isinstance(model.user_embedding, nn.Embedding)


def test_table_parameters_counts_id_and_feature_tables():
    model = EmbeddingModel()
    base = mmrec_tables.table_parameters(model, N_USERS, N_ITEMS)
    assert base == ((N_USERS + N_ITEMS) * DIM, N_ITEMS * 24)
    compress(model, jpq_targets=["user", "item", "text"])
    ids, feats = mmrec_tables.table_parameters(model, N_USERS, N_ITEMS)
    assert ids == 2 * 4 * 8 * (DIM // 4)
    assert feats == model.text_embedding.sub_embeddings.numel()


def test_user_defined_model_needs_a_declaration():
    with pytest.raises(JPQTargetError, match="model MyModel has no ID table.*register_id_tables.*jpq_tables"):
        compress(UserDefinedModel())


def test_registry_is_honoured_by_the_mmrec_host():
    register_id_tables("MyModel", user=["people"], item=["things"], user_item=["both"])
    model = UserDefinedModel()
    summary = compress(model)
    assert {r.path: r.entity for r in summary["records"]} == {"people": "user", "things": "item", "both": "user+item"}
    assert isinstance(model.people, JPQEmbedding) and isinstance(model.things_jpq, JPQEmbedding)
    assert model.both.padding_idx == 0 and model.both.ksub == 16 and not model.both(torch.tensor([0])).any()
    assert mmrec_tables.table_parameters(model, N_USERS, N_ITEMS)[0] == 8 * DIM + 8 * DIM + 16 * DIM


def test_yaml_jpq_tables_are_honoured_and_the_registry_comes_first():
    model = UserDefinedModel()
    compress(model, jpq_tables={"user": ["people"], "item": ["things"]})
    assert isinstance(model.people, JPQEmbedding) and isinstance(model.both, nn.Embedding)
    register_id_tables("MyModel", item=["things"])
    registered = UserDefinedModel()
    compress(registered, jpq_tables={"user": ["people"]})
    assert isinstance(registered.people, nn.Embedding) and isinstance(registered.things_jpq, JPQEmbedding)


def test_yaml_jpq_tables_override_the_host_specs():
    model = EmbeddingModel()  # FREEDOM: its specs name user_embedding and item_id_embedding
    summary = compress(model, jpq_tables={"user": ["user_embedding"]}, jpq_targets=["user", "item"])
    assert [r.path for r in summary["records"]] == ["user_embedding"]
    assert isinstance(model.item_id_embedding, nn.Embedding)


# -- feature tables ----------------------------------------------------------------------------
def test_feature_table_pq_starts_near_features_and_keeps_trainability(caplog):
    model = EmbeddingModel(text_trainable=True)
    original = model.text_embedding.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        summary = compress(model, jpq_targets=["user", "item", "text"])
    new = model.text_embedding
    assert isinstance(new, JPQEmbedding) and new.sub_embeddings.requires_grad
    error = (new.weight - original).norm() / original.norm()
    assert summary["features"][0].relative_error == pytest.approx(float(error), rel=1e-4)
    assert error < 1.0  # better than predicting zeros
    assert "reconstruction error" in caplog.text
    frozen = EmbeddingModel(text_trainable=False)
    compress(frozen, jpq_targets=["text"])
    assert not frozen.text_embedding.sub_embeddings.requires_grad
    assert isinstance(frozen.user_embedding, nn.Embedding)  # only text was asked


def test_missing_feature_table_is_reported_not_silent(caplog):
    model = RawParameterModel()
    with caplog.at_level(logging.WARNING):
        compress(model, jpq_targets=["user", "item", "image"])
    assert "has no image_embedding" in caplog.text


def test_pq_feature_table_error_drops_with_more_centroids():
    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(0))
    _, coarse = pq_feature_table(x, 3, 4, 0)
    _, fine = pq_feature_table(x, 3, 64, 0)
    assert fine.relative_error < coarse.relative_error


# -- codes from features -----------------------------------------------------------------------
def test_user_mean_features_is_mean_of_train_items():
    R = interactions()
    F = np.random.default_rng(0).random((N_ITEMS, 5)).astype(np.float32)
    U = user_mean_features(R, F)
    row = R[3].indices
    assert np.allclose(U[3], F[row].mean(0), atol=1e-6)


@pytest.mark.parametrize("mode", ["features", "features_svd"])
def test_feature_id_codes_shapes_and_determinism(mode):
    F = normalised_concat([np.random.default_rng(1).random((N_ITEMS, 6)), np.random.default_rng(2).random((N_ITEMS, 4))])
    u1, i1 = feature_id_codes(F, interactions(), 4, 8, 3, mode)
    u2, i2 = feature_id_codes(F, interactions(), 4, 8, 3, mode)
    assert u1.shape == (N_USERS, 4) and i1.shape == (N_ITEMS, 4)
    assert torch.equal(u1, u2) and torch.equal(i1, i2)
    assert int(i1.max()) < 8


def test_features_code_assignment_in_compress_uses_model_features():
    model = EmbeddingModel()
    compress(model, jpq_code_assign="features")
    F = normalised_concat([model.t_feat])
    _, items = feature_id_codes(F, interactions(), 4, 8, 7, "features")
    assert torch.equal(model.item_id_embedding.codes, items)


# -- compat and launcher pieces ------------------------------------------------------------------
def test_user_graph_dict_matches_brute_force():
    R = interactions()
    graph = mmrec_compat.user_graph_dict(R, top=5)
    dense = (R.toarray() > 0).astype(int)
    co = dense @ dense.T
    np.fill_diagonal(co, 0)
    for u in (0, 7, 21):
        neighbours, weights = graph[u]
        assert len(neighbours) == min(5, int((co[u] > 0).sum()))
        assert [co[u, v] for v in neighbours] == weights
        assert weights == sorted(weights, reverse=True)
        if len(neighbours) == 5:
            assert min(weights) >= np.sort(co[u])[-5]


def test_sparsesvd_standin_returns_top_triplets_descending():
    A = sp.random(20, 15, density=0.3, random_state=0, format="csc")
    ut, s, vt = mmrec_compat.sparsesvd(A, 4)
    assert ut.shape == (4, 20) and vt.shape == (4, 15)
    assert np.all(np.diff(s) <= 0)
    assert np.allclose(s, np.linalg.svd(A.toarray(), compute_uv=False)[:4])
    assert np.allclose(ut.T @ np.diag(s) @ vt, (ut.T * s) @ vt)


def test_result_cache_parameter_becomes_plain_tensor():
    @qualified("models.dualgnn", "DualGNN")
    class Cache(nn.Module):
        def __init__(self):
            super().__init__()
            self.result_embed = nn.Parameter(torch.zeros(3, 2))

    model = Cache()
    mmrec_compat.after_init(model)
    model.result_embed = torch.ones(3, 2)  # what DualGNN.forward does
    assert "result_embed" not in dict(model.named_parameters())


def test_missing_torch_scatter_stops_with_one_line(monkeypatch):
    monkeypatch.setitem(mmrec_compat.NEEDS_MODULE, "SLMRec", "surely_not_installed_module")
    with pytest.raises(mmrec_compat.MMRecUnsupported, match="SLMRec imports surely_not_installed_module"):
        mmrec_compat.check_importable("SLMRec")


def test_grid_scalars_become_one_element_lists():
    cfg = {"hyper_parameters": ["seed", "reg_weight", "dropout"], "seed": [999], "reg_weight": 0.0, "dropout": [0.8, 0.9]}
    mmrec_run._grid_scalars_as_lists(cfg)
    assert cfg["reg_weight"] == [0.0] and cfg["dropout"] == [0.8, 0.9] and cfg["seed"] == [999]


def test_cli_overrides_parse_like_mmrec_yaml():
    got = overrides_from_argv(["--epochs=2", "--jpq", "--reg_weight=1e-4", "--jpq_targets=[user,item,text]"])
    assert got == {"epochs": 2, "jpq": True, "reg_weight": 1e-4, "jpq_targets": ["user", "item", "text"]}
    with pytest.raises(LauncherError, match="'epochs' is not understood"):
        overrides_from_argv(["epochs"])


def test_checkpoint_tags_and_state_checks():
    assert mmrec_run.checkpoint_tag({"jpq": False}) == "base"
    assert mmrec_run.checkpoint_tag({"jpq": True}) == "jpq"
    assert mmrec_run.checkpoint_tag({"jpq": True, "jpq_targets": "user,item,text"}) == "jpq-user-item-text"
    base = EmbeddingModel()
    state = base.state_dict()
    compressed = EmbeddingModel()
    compress(compressed)
    with pytest.raises(mmrec.JPQCheckpointError, match="uncompressed"):
        mmrec.check_state_matches(compressed, state)
    with pytest.raises(mmrec.JPQCheckpointError, match="JPQ-compressed"):
        mmrec.check_state_matches(base, compressed.state_dict())


def test_table_parameters_counts_a_shared_parameter_once():
    @qualified("models.dualgnn", "DualGNN")
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.t_gcn = Preference()
            self.t_preference = self.t_gcn.preference  # what DualGNN.forward does

    assert mmrec_tables.table_parameters(Shared(), N_USERS, N_ITEMS) == (N_USERS * DIM, 0)


@qualified("models.bpr", "BPR")
class BPRModel(nn.Module):
    """MMRec's BPR: its full_sort_predict is the user vectors @ the raw item table."""

    def __init__(self):
        super().__init__()
        self.user_embedding = nn.Embedding(N_USERS, DIM)
        self.item_embedding = nn.Embedding(N_ITEMS, DIM)

    def get_user_embedding(self, user):
        return self.user_embedding(user)

    def full_sort_predict(self, interaction):
        return torch.matmul(self.get_user_embedding(interaction[0]), self.item_embedding.weight.transpose(0, 1))


def test_bpr_full_sort_scores_from_the_codes():
    model = BPRModel()
    compress(model)
    assert model._urecjpq_pq_full_sort == "BPR"
    users = torch.tensor([0, 3, 29])
    with torch.no_grad():
        routed = model.full_sort_predict((users,))
        own = BPRModel.full_sort_predict(model, (users,))  # MMRec's own computation on the decoded table
    assert routed.shape == (3, N_ITEMS) and torch.allclose(routed, own, atol=1e-6)

    class OwnScores(BPRModel):  # a subclass with its own full_sort_predict keeps it
        def full_sort_predict(self, interaction):
            return super().full_sort_predict(interaction) * 2

    other = OwnScores()
    compress(other)
    assert not hasattr(other, "_urecjpq_pq_full_sort")


def test_per_table_overrides_reach_id_and_feature_tables():
    model = EmbeddingModel(text_trainable=True)  # text features are 24 wide
    compress(model, jpq_targets=["user", "item", "text"],
             jpq_table_overrides={"item": {"ksub": 16}, "text": {"M": 8, "ksub": 4}})
    assert (model.user_embedding.M, model.user_embedding.ksub) == (4, 8)
    assert (model.item_id_embedding.M, model.item_id_embedding.ksub) == (4, 16)
    assert (model.text_embedding.M, model.text_embedding.ksub) == (8, 4)


def test_one_table_of_users_and_items_refuses_different_settings_for_them():
    model = JointModel()
    with pytest.raises(JPQConfigError, match="keeps users and items in one table .*same M and ksub"):
        compress(model, jpq_table_overrides={"item": {"ksub": 4}})
    assert "id_gcn.id_embedding" in dict(model.named_parameters())  # nothing changed
