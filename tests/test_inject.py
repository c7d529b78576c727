import pytest
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, JPQConfigError, JPQEmbedding, JPQTargetError, register_id_tables
from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.inject import (
    count_trainable,
    find_id_tables,
    inject_jpq,
    jpq_modules,
    list_candidate_tables,
    match_id_tables,
)

N_USERS, N_ITEMS, D = 30, 50, 16
COUNTS = {"user": N_USERS, "item": N_ITEMS}


def codes_for(M=4, ksub=8):
    return lambda entity: random_codes(COUNTS[entity], M, ksub, seed=1 if entity == "user" else 2)


class EmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.user_embedding = nn.Embedding(N_USERS, D)
        self.item_embedding = nn.Embedding(N_ITEMS, D, padding_idx=0)
        self.mlp = nn.Linear(D, D)

    def forward(self, u, i):
        return (self.user_embedding(u) * self.item_embedding.weight[i]).sum(-1)


class ParameterModel(nn.Module):  # VBPR/LayerGCN style raw Parameters
    def __init__(self):
        super().__init__()
        self.u_embedding = nn.Parameter(torch.randn(N_USERS, D))
        self.i_embedding = nn.Parameter(torch.randn(N_ITEMS, D))

    def forward(self, u, i):
        return (self.u_embedding[u] * self.i_embedding[i]).sum(-1)


class ParameterDictModel(nn.Module):  # MMRec LightGCN style
    def __init__(self):
        super().__init__()
        self.embedding_dict = nn.ParameterDict(
            {"user_emb": nn.Parameter(torch.randn(N_USERS, D)), "item_emb": nn.Parameter(torch.randn(N_ITEMS, D))}
        )

    def forward(self, u, i):
        return (self.embedding_dict["user_emb"][u] * self.embedding_dict["item_emb"][i]).sum(-1)


class NoTables(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(N_ITEMS, D)


@pytest.mark.parametrize("cls", [EmbeddingModel, ParameterModel, ParameterDictModel])
def test_swap_keeps_forward_working_and_parameters_drop_as_computed(cls):
    torch.manual_seed(0)
    model = cls()
    cfg = JPQConfig(M=4, ksub=8)
    before = count_trainable(model)
    refs = find_id_tables(model, COUNTS, cfg.targets)
    assert sorted(r.entity for r in refs) == ["item", "user"]
    records = inject_jpq(model, refs, codes_for(), cfg)
    assert count_trainable(model) == before - (N_USERS + N_ITEMS) * D + 2 * 8 * D
    assert sum(r.params_after for r in records) == 2 * 8 * D
    # no full ID table is left anywhere
    assert match_id_tables(list_candidate_tables(model), COUNTS, cfg.targets) == []
    u, i = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    out = model(u, i)
    out.sum().backward()
    assert all(m.sub_embeddings.grad is not None for m in jpq_modules(model).values())
    assert sorted(k for k in model.state_dict() if k.endswith("codes")) == sorted(
        k.replace("sub_embeddings", "codes") for k in model.state_dict() if k.endswith("sub_embeddings")
    )


def test_parameter_table_reads_decoded_values_and_refuses_reassignment():
    model = ParameterModel()
    inject_jpq(model, find_id_tables(model, COUNTS, ["user", "item"]), codes_for(), JPQConfig(M=4, ksub=8))
    assert isinstance(model.u_embedding_jpq, JPQEmbedding)
    model.eval()  # training-mode reads drop splits at random (split_dropout)
    assert torch.equal(model.u_embedding, model.u_embedding_jpq.weight)
    assert "u_embedding" not in dict(model.named_parameters())
    with pytest.raises(AttributeError, match="JPQ-compressed"):
        model.u_embedding = nn.Parameter(torch.zeros(N_USERS, D))
    # other instances of the same class are not affected
    assert isinstance(ParameterModel().u_embedding, nn.Parameter)


def test_parameter_dict_entries_are_swapped_in_place():
    model = ParameterDictModel()
    keys = list(model.embedding_dict.keys())
    inject_jpq(model, find_id_tables(model, COUNTS, ["user", "item"]), codes_for(), JPQConfig(M=4, ksub=8))
    model.eval()  # training-mode reads drop splits at random (split_dropout)
    assert torch.equal(model.embedding_dict["item_emb"], model.embedding_dict.item_emb_jpq.weight)
    assert list(model.embedding_dict.keys()) == keys


def test_padding_idx_and_entities_carry_over():
    model = EmbeddingModel()
    inject_jpq(model, find_id_tables(model, COUNTS, ["user", "item"]), codes_for(), JPQConfig(M=4, ksub=8))
    assert model.item_embedding.padding_idx == 0 and model.user_embedding.padding_idx is None
    assert torch.equal(model.item_embedding.weight[0], torch.zeros(D))


def test_targets_select_tables():
    refs = find_id_tables(EmbeddingModel(), COUNTS, ["item"])
    assert [r.path for r in refs] == ["item_embedding"]


def test_rows_decide_the_entity_names_break_ties():
    cands = [("user_neigh_embedding", "embedding", (N_ITEMS, D)), ("user_embedding", "embedding", (N_USERS, D))]
    refs = match_id_tables(cands, COUNTS, ["user", "item"])
    assert {r.path: r.entity for r in refs} == {"user_neigh_embedding": "item", "user_embedding": "user"}
    tie = match_id_tables([("item_emb", "embedding", (10, D))], {"user": 10, "item": 10}, ["user", "item"])
    assert tie[0].entity == "item"


def test_model_without_tables_names_model_and_what_was_searched():
    with pytest.raises(JPQTargetError, match=r"model NoTables has no ID table .* searched nn.Embedding modules .*"
                       r"encoder.weight \[16, 50\]"):
        find_id_tables(NoTables(), COUNTS, ["user", "item"])


def test_registry_declares_custom_tables():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.people = nn.Embedding(N_USERS, D)
            self.things = nn.Embedding(N_ITEMS, D)

    with pytest.raises(JPQTargetError):
        find_id_tables(Custom(), COUNTS, ["user", "item"])
    register_id_tables(Custom, user=["people"], item=["things"])
    refs = find_id_tables(Custom(), COUNTS, ["user", "item"])
    assert {r.path: r.entity for r in refs} == {"people": "user", "things": "item"}
    register_id_tables(Custom, user=["persons"])
    with pytest.raises(JPQTargetError, match="declared user table 'persons' does not exist"):
        find_id_tables(Custom(), COUNTS, ["user"])


def test_all_tables_are_validated_before_any_change():
    model = EmbeddingModel()
    model.item_embedding = nn.Embedding(N_ITEMS, 18)  # 18 is not a multiple of M=4
    refs = find_id_tables(model, COUNTS, ["user", "item"])
    calls = []
    with pytest.raises(JPQConfigError, match="embedding size 18 of item_embedding is not a multiple of jpq_M=4"):
        inject_jpq(model, refs, lambda e: calls.append(e), JPQConfig(M=4, ksub=8))
    assert calls == [] and isinstance(model.user_embedding, nn.Embedding)


def test_a_table_failing_to_build_leaves_every_table_in_place(monkeypatch):
    model = EmbeddingModel()
    built = []
    original = JPQEmbedding.from_table.__func__

    def from_table(cls, table, *args, **kwargs):
        if built:  # the second table fails, as a constructor check would
            raise JPQConfigError("refused")
        built.append(table)
        return original(cls, table, *args, **kwargs)

    monkeypatch.setattr(JPQEmbedding, "from_table", classmethod(from_table))
    with pytest.raises(JPQConfigError, match="refused"):
        inject_jpq(model, find_id_tables(model, COUNTS, ["user", "item"]), codes_for(), JPQConfig(M=4, ksub=8))
    assert len(built) == 1 and not jpq_modules(model) and "_urecjpq_swaps" not in model.__dict__


@pytest.mark.parametrize("option", [{"max_norm": 1.0}, {"sparse": True}, {"scale_grad_by_freq": True}])
def test_embedding_options_a_jpq_table_would_drop_are_refused_before_any_change(option):
    from urecjpq_plugin import JPQConfig, apply_jpq
    from urecjpq_plugin.inject import JPQTargetError

    class MF(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding = nn.Embedding(300, 16)
            self.item_embedding = nn.Embedding(200, 16, **option)

    model = MF()
    with pytest.raises(JPQTargetError, match=list(option)[0]) as err:
        apply_jpq(model, JPQConfig(M=4, ksub=16, code_assign="random"), counts={"user": 300, "item": 200})
    assert "\n" not in str(err.value)
    assert isinstance(model.user_embedding, nn.Embedding) and isinstance(model.item_embedding, nn.Embedding)
