"""jpq_codes_from: codes from k-means of an uncompressed checkpoint's trained rows (apply_jpq and both hosts)."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import pytest
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, JPQConfigError, apply_jpq
from urecjpq_plugin.checkpoint_file import CheckpointFileError, UntrustedCheckpointError
from urecjpq_plugin.codes import kmeans_codes
from urecjpq_plugin.config import JPQConfig as Config

from .test_apply import COUNTS, D, N_ITEMS, N_USERS, DictModel, TinyBPR, assert_unchanged, snapshot
from .test_mmrec_tables import EmbeddingModel, EncoderModel, JointModel
from .test_mmrec_tables import compress as mmrec_compress

CONFIG = JPQConfig(M=4, ksub=8, split_dropout=0.0, seed=3)


def clustered_rows(n: int, clusters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows near one of ``clusters`` far-apart centres, and each row's centre."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, D, generator=gen) * 10
    labels = torch.arange(n) % clusters
    return centres[labels] + 0.01 * torch.randn(n, D, generator=gen), labels


def trained_checkpoint(path, wrap: bool = True) -> dict:
    users, user_labels = clustered_rows(N_USERS, 8, seed=1)
    items, item_labels = clustered_rows(N_ITEMS, 8, seed=2)
    state = {"user_embedding.weight": users, "item_embedding.weight": items}
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)
    return {"user": (users, user_labels), "item": (items, item_labels)}


@pytest.mark.parametrize("wrap", [True, False], ids=["host checkpoint", "bare state dict"])
def test_ids_with_alike_trained_rows_share_codes(tmp_path, wrap):
    path = tmp_path / "plain.pth"
    trained = trained_checkpoint(path, wrap)
    model = TinyBPR()
    report = apply_jpq(model, replace(CONFIG, codes_from=str(path)), COUNTS)
    assert report.code_assign == "codes_from"
    for entity, table in (("user", model.user_embedding), ("item", model.item_embedding)):
        rows, labels = trained[entity]
        codes = table.codes.long()
        same = labels[:, None] == labels[None, :]
        equal_codes = (codes[:, None, :] == codes[None, :, :]).all(-1)
        assert torch.equal(equal_codes, same)  # as many clusters as sub-ids: one code per cluster
        assert torch.equal(codes, kmeans_codes(rows, 4, 8, seed=3)[0].long())
    assert model.user_embedding.sub_embeddings.requires_grad  # trained from scratch: only the codes come along


def test_parameter_dict_tables_read_their_state_dict_keys(tmp_path):
    source = DictModel()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "dict.pth")
    model = DictModel()
    apply_jpq(model, {"M": 4, "ksub": 8, "codes_from": str(tmp_path / "dict.pth")}, COUNTS)
    expected = kmeans_codes(source.tables["user_emb"].detach(), 4, 8, seed=2020)[0]
    assert torch.equal(model.tables.user_emb_jpq.codes, expected)


def test_codes_from_with_another_code_assignment_is_refused():
    with pytest.raises(JPQConfigError, match="jpq_code_assign='svd' and jpq_codes_from='x.pth' both choose"):
        Config.from_mapping({"jpq_code_assign": "svd", "jpq_codes_from": "x.pth"})
    with pytest.raises(JPQConfigError, match="jpq_codes_from=3 is invalid"):
        Config(codes_from=3)
    with pytest.raises(JPQConfigError, match="no user or item table"):
        Config(codes_from="x.pth", targets=("image",))
    assert Config.from_mapping({"jpq_codes_from": "x.pth"}).codes_from == "x.pth"


def test_codes_and_codes_from_together_are_refused(tmp_path):
    trained_checkpoint(tmp_path / "c.pth")
    model = TinyBPR()
    before = snapshot(model)
    with pytest.raises(JPQConfigError, match="both give the codes"):
        apply_jpq(model, {"M": 4, "ksub": 8, "codes_from": str(tmp_path / "c.pth")}, COUNTS,
                  codes={"user": torch.zeros(N_USERS, 4), "item": torch.zeros(N_ITEMS, 4)})
    assert_unchanged(model, before)


def _spoil(tmp_path, how):
    path = tmp_path / "bad.pth"
    users, items = torch.randn(N_USERS, D), torch.randn(N_ITEMS, D)
    if how == "missing":
        return str(tmp_path / "nowhere.pth")
    if how == "compressed":
        state = {"user_embedding.codes": torch.zeros(N_USERS, 4, dtype=torch.uint8), "item_embedding.weight": items}
    elif how == "rows":
        state = {"user_embedding.weight": torch.randn(N_USERS + 1, D), "item_embedding.weight": items}
    elif how == "nan":
        users[3, 0] = float("nan")
        state = {"user_embedding.weight": users, "item_embedding.weight": items}
    elif how == "width":
        state = {"user_embedding.weight": torch.randn(N_USERS, 6), "item_embedding.weight": items}
    elif how == "pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo unpickled",))
        with open(path, "wb") as fh:
            pickle.dump({"state_dict": {"x": Evil()}}, fh)
        return str(path)
    torch.save({"state_dict": state}, path)
    return str(path)


@pytest.mark.parametrize("how, error, message", [
    ("missing", CheckpointFileError, r"nowhere.pth' does not exist"),
    ("compressed", JPQConfigError, r"no 2-d 'user_embedding.weight' for the user codes; .*its 2-d tensors: "
                                   r"user_embedding.codes \[40, 4\], item_embedding.weight \[60, 16\]"),
    ("rows", JPQConfigError, r"user_embedding.weight has 41 rows, the model's table has 40"),
    ("nan", JPQConfigError, r"user_embedding.weight holds NaN or inf rows"),
    ("width", JPQConfigError, r"the user rows are 6 wide, which does not split into jpq_M=4 parts"),
    ("pickle", UntrustedCheckpointError, r"holds (posix|os|nt)\.system, which no RecBole or plugin checkpoint does"),
])
def test_a_bad_checkpoint_is_one_line_and_the_model_is_untouched(tmp_path, how, error, message):
    path = _spoil(tmp_path, how)
    model = TinyBPR()
    before = snapshot(model)
    with pytest.raises(error, match=message) as info:
        apply_jpq(model, {"M": 4, "ksub": 8, "codes_from": path}, COUNTS)
    assert "\n" not in str(info.value)
    assert_unchanged(model, before)


# -- MMRec host (modules shaped like MMRec's models) ------------------------------------------------
def test_mmrec_host_takes_codes_from_the_models_own_tables(tmp_path):
    source = EmbeddingModel()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "freedom.pth")
    model = EmbeddingModel()
    mmrec_compress(model, jpq_codes_from=str(tmp_path / "freedom.pth"))
    for table, trained in ((model.user_embedding, source.user_embedding), (model.item_id_embedding,
                                                                           source.item_id_embedding)):
        assert torch.equal(table.codes, kmeans_codes(trained.weight.detach(), 4, 8, seed=7)[0])


def test_mmrec_joint_table_and_parameter_dict_rows(tmp_path):
    source = JointModel()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "grcn.pth")
    model = JointModel()
    mmrec_compress(model, jpq_codes_from=str(tmp_path / "grcn.pth"))
    joint = source.id_gcn.id_embedding.detach()
    users = torch.cat([joint[:30], source.t_gcn.preference.detach()], 1)  # a user's rows of both tables
    expected_users = kmeans_codes(users, 4, 8, seed=7)[0].long()
    expected_items = kmeans_codes(joint[30:], 4, 8, seed=7)[0].long()
    codes = model.id_gcn.id_embedding_jpq.codes.long()
    assert torch.equal(codes[:30], expected_users) and torch.equal(codes[30:], expected_items + 8)

    source, model = EncoderModel(), EncoderModel()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "lgn.pth")
    mmrec_compress(model, jpq_codes_from=str(tmp_path / "lgn.pth"))
    expected = kmeans_codes(source.online_encoder.embedding_dict["item_emb"].detach(), 4, 8, seed=7)[0]
    assert torch.equal(model.online_encoder.embedding_dict.item_emb_jpq.codes, expected)


def test_mmrec_checkpoint_of_another_model_is_refused_before_any_change(tmp_path):
    torch.save({"state_dict": EncoderModel().state_dict()}, tmp_path / "other.pth")
    model = EmbeddingModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(JPQConfigError, match="no 2-d 'user_embedding.weight' .*online_encoder.embedding_dict.user_emb"):
        mmrec_compress(model, jpq_codes_from=str(tmp_path / "other.pth"))
    assert isinstance(model.user_embedding, nn.Embedding) and type(model.user_embedding) is nn.Embedding
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- RecBole host -----------------------------------------------------------------------------------
def test_recbole_model_takes_codes_from_its_uncompressed_checkpoint(recbole_env, tmp_path):
    from .test_recbole_models import build

    _, plain, *_ = build("BPR", recbole_env)
    torch.save({"state_dict": plain.state_dict(), "config": None}, tmp_path / "bpr.pth")
    config, model, *_ = build("BPR", {**recbole_env, "jpq": True, "jpq_M": 8, "jpq_codes_from": str(tmp_path / "bpr.pth")})
    for table in ("user_embedding", "item_embedding"):
        expected = kmeans_codes(plain.state_dict()[f"{table}.weight"], 8, 256, seed=config["seed"])[0]
        assert torch.equal(getattr(model, table).codes, expected)


def test_recbole_context_model_refuses_codes_from_in_one_line(recbole_env, tmp_path):
    from .test_recbole_context import ctr_settings
    from .test_recbole_models import build

    torch.save({"state_dict": {}}, tmp_path / "fm.pth")
    with pytest.raises(JPQConfigError, match="keeps its user/item rows inside shared tables"):
        build("FM", {**ctr_settings(recbole_env), "jpq": True, "jpq_codes_from": str(tmp_path / "fm.pth")})
