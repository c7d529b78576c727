"""Per-table M / ksub (``table_overrides`` / YAML ``jpq_table_overrides``): one config, each table its own."""

import pytest
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, apply_jpq, jpq_state_dict, load_jpq
from urecjpq_plugin.config import JPQConfigError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.user_embedding, self.item_embedding = nn.Embedding(60, 16), nn.Embedding(90, 16)


@pytest.mark.parametrize("given", [{"item": {"ksub": 32, "M": 2}}, "{item: {ksub: 32, M: 2}}"])
def test_yaml_and_command_line_overrides_read_alike(given):
    config = JPQConfig.from_mapping({"jpq_ksub": 8, "jpq_table_overrides": given}).for_dims([16])
    assert (config.for_table("item").M, config.for_table("item").ksub) == (2, 32)
    assert (config.for_table("user").M, config.for_table("user").ksub) == (4, 8)  # jpq_M: auto = 16 / 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image": {"ksub": 8}}, "names 'image', which jpq_targets does not compress"),
        ({"item": {"dsub": 2}}, r"has keys \['dsub'\]; a table can override M, ksub"),
        ({"item": {"ksub": 1}}, r"jpq_table_overrides\['item'\]: jpq_ksub=1 is invalid"),
        ({"item": {"M": "four"}}, "is not an integer"),
        ({"item": 8}, "is invalid; give {target: {M: .., ksub: ..}}"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(JPQConfigError, match=message):
        JPQConfig(table_overrides=overrides)


@pytest.mark.parametrize("code_assign", ["random", "svd"])
def test_each_table_gets_its_own_M_and_ksub_and_reloads(code_assign):
    import scipy.sparse as sp

    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(0, 60, (600,), generator=rng), torch.randint(0, 90, (600,), generator=rng)
    interactions = sp.csr_matrix((torch.ones(600).numpy(), (rows.numpy(), cols.numpy())), shape=(60, 90))
    config = JPQConfig(M=4, ksub=8, code_assign=code_assign, table_overrides={"item": {"M": 2, "ksub": 32}})
    model = Tiny()
    apply_jpq(model, config, {"user": 60, "item": 90}, interactions=interactions)
    user, item = model.user_embedding, model.item_embedding
    assert (user.M, user.ksub, tuple(user.codes.shape)) == (4, 8, (60, 4))
    assert (item.M, item.ksub, tuple(item.codes.shape)) == (2, 32, (90, 2))
    assert int(item.codes.max()) >= 8  # the item codes really use the larger codebook
    (user(rows[:64]) * item(cols[:64])).sum().backward()
    assert user.sub_embeddings.grad is not None and item.sub_embeddings.grad is not None
    state = jpq_state_dict(model)
    fresh = Tiny()
    load_jpq(fresh, state)
    assert (fresh.item_embedding.M, fresh.item_embedding.ksub) == (2, 32)
    model.eval(), fresh.eval()  # no split dropout: reads are the decoded rows
    with torch.no_grad():
        assert torch.equal(fresh.item_embedding.weight, item.weight)
        assert torch.equal(fresh.user_embedding.weight, user.weight)


def test_given_codes_are_checked_against_the_tables_own_settings():
    config = JPQConfig(M=4, ksub=8, table_overrides={"item": {"M": 2}})
    with pytest.raises(JPQConfigError, match=r"codes\['item'\] has shape \(90, 4\); item needs \(90, 2\)"):
        apply_jpq(Tiny(), config, {"user": 60, "item": 90},
                  codes={"user": torch.zeros(60, 4, dtype=torch.uint8), "item": torch.zeros(90, 4, dtype=torch.uint8)})


def test_an_override_the_table_cannot_take_fails_before_any_change():
    model = Tiny()
    with pytest.raises(JPQConfigError, match="embedding size 16 of item_embedding is not a multiple of jpq_M=3"):
        apply_jpq(model, JPQConfig(ksub=8, code_assign="random", table_overrides={"item": {"M": 3}}),
                  {"user": 60, "item": 90})
    assert type(model.user_embedding) is nn.Embedding and type(model.item_embedding) is nn.Embedding


def test_recbole_general_and_context_models_take_per_table_settings(recbole_env):
    from urecjpq_plugin.row_ranges import RowRangeEmbedding

    from .test_recbole_models import build

    overrides = {**recbole_env, "jpq": True, "jpq_ksub": 64, "jpq_table_overrides": {"item": {"ksub": 128, "M": 8}}}
    _, model, *_ = build("BPR", overrides)
    assert (model.user_embedding.M, model.user_embedding.ksub) == (16, 64)
    assert (model.item_embedding.M, model.item_embedding.ksub) == (8, 128)
    # FM's token table is 10 wide: jpq_M auto gives 5 splits of 2 dims; the item rows take 2 of 5 dims each
    overrides["jpq_table_overrides"] = {"item": {"ksub": 128, "M": 2}}
    _, model, *_ = build("FM", {**overrides, "epochs": 1, "eval_batch_size": 4096})
    table = model.token_embedding_table.embedding
    assert isinstance(table, RowRangeEmbedding)
    settings = {r.entity: (part.M, part.ksub) for r, part in zip(table.ranges, table.parts)}
    assert settings == {"user": (5, 64), "item": (2, 128)}
