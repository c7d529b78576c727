"""apply_jpq / unload_jpq / jpq_state_dict / load_jpq on plain PyTorch models (no host framework)."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

import urecjpq_plugin.apply as apply_module
from urecjpq_plugin import (
    JPQCheckpointError,
    JPQConfig,
    JPQConfigError,
    JPQEmbedding,
    JPQTargetError,
    apply_jpq,
    jpq_state_dict,
    load_jpq,
    register_id_tables,
    unload_jpq,
)
from urecjpq_plugin.codes import random_codes, svd_codes
from urecjpq_plugin.inject import jpq_modules

N_USERS, N_ITEMS, D = 40, 60, 16
COUNTS = {"user": N_USERS, "item": N_ITEMS}
# split_dropout 0: these tests compare training-mode outputs exactly (dropout has its own tests)
CONFIG = JPQConfig(M=4, ksub=8, code_assign="random", split_dropout=0.0)



class TinyBPR(nn.Module):
    def __init__(self, n_users=N_USERS, n_items=N_ITEMS):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, D)
        self.item_embedding = nn.Embedding(n_items, D)

    def forward(self, u, i):
        return (self.user_embedding(u) * self.item_embedding(i)).sum(-1)


class ParamModel(nn.Module):
    """A raw ``nn.Parameter`` item table, a user table with ``padding_idx``, and other weights."""

    def __init__(self):
        super().__init__()
        self.user_embedding = nn.Embedding(N_USERS, D, padding_idx=0)
        self.item_table = nn.Parameter(torch.randn(N_ITEMS, D) * 0.1)
        self.proj = nn.Linear(D, D)

    def forward(self, u, i):
        return (self.proj(self.user_embedding(u)) * self.item_table[i]).sum(-1)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = nn.ParameterDict(
            {"user_emb": nn.Parameter(torch.randn(N_USERS, D)), "item_emb": nn.Parameter(torch.randn(N_ITEMS, D))}
        )

    def forward(self, u, i):
        return (self.tables["user_emb"][u] * self.tables["item_emb"][i]).sum(-1)


def batch(seed=0, n=128):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(N_USERS, (n,), generator=gen), torch.randint(N_ITEMS, (n,), generator=gen),
            torch.randint(N_ITEMS, (n,), generator=gen))


def bpr_loss(model, u, i, j):
    return -F.logsigmoid(model(u, i) - model(u, j)).mean()


def train(model, steps=8):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    u, i, j = batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = bpr_loss(model, u, i, j)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model):
    return type(model), {k: v.clone() for k, v in model.state_dict().items()}, dict(model.__dict__.get("_urecjpq_swaps", {}))


def assert_unchanged(model, before):
    cls, state, swaps = before
    assert type(model) is cls and dict(model.__dict__.get("_urecjpq_swaps", {})) == swaps
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("cls", [TinyBPR, ParamModel, DictModel])
def test_apply_train_save_load_unload(cls, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = cls()
    plain_keys = list(model.state_dict())
    tables = {n: p.numel() for n, p in model.named_parameters() if p.ndim == 2 and p.shape[0] in (N_USERS, N_ITEMS)}
    before = sum(p.numel() for p in model.parameters())
    report = apply_jpq(model, CONFIG, COUNTS)
    assert report.trainable_before == before
    assert report.trainable_after == before - sum(tables.values()) + len(tables) * CONFIG.ksub * D
    text = str(report)
    assert f"{before:,} -> {report.trainable_after:,}" in text and len(text.splitlines()) == 1 + len(tables)
    assert type(model).__name__ == cls.__name__

    losses = train(model)
    assert losses[-1] < losses[0]

    path = tmp_path / "jpq.pt"
    torch.save(jpq_state_dict(model), path)
    state = torch.load(path, weights_only=True)
    u, i, _ = batch(1)
    torch.manual_seed(1)  # other initial tables: the load must bring the trained ones
    fresh = cls()
    if cls is ParamModel:  # the jpq state holds JPQ tables only; the rest is the host's business
        fresh.proj.load_state_dict(model.proj.state_dict())
    expected = model(u, i).detach()
    assert not torch.allclose(fresh(u, i), expected)

    def no_recompute(*args, **kwargs):
        raise AssertionError("load_jpq must take the codes from the checkpoint")

    monkeypatch.setattr(apply_module, "assign_codes", no_recompute)
    loaded = load_jpq(fresh, state)
    assert loaded.code_assign == "checkpoint" and loaded.trainable_after == report.trainable_after
    torch.testing.assert_close(fresh(u, i), expected, rtol=0, atol=0)
    assert sorted(fresh.state_dict()) == sorted(model.state_dict())

    unload_jpq(model)
    assert type(model) is cls and "_urecjpq_swaps" not in model.__dict__
    assert list(model.state_dict()) == plain_keys  # same keys, same order as the never-compressed model
    assert not any(isinstance(m, JPQEmbedding) for m in model.modules())
    torch.testing.assert_close(model(u, i), expected, rtol=0, atol=0)
    assert train(model, steps=2)  # plain tables train again


def test_unload_keeps_padding_idx_and_trainability():
    # (sparse=True, max_norm and scale_grad_by_freq are refused at apply time: tests/test_inject.py)
    model = ParamModel()
    model.item_table.requires_grad_(False)
    apply_jpq(model, CONFIG, COUNTS)
    unload_jpq(model)
    assert isinstance(model.user_embedding, nn.Embedding) and type(model.item_table) is nn.Parameter
    assert model.user_embedding.padding_idx == 0
    assert torch.equal(model.user_embedding.weight[0], torch.zeros(D))
    assert model.user_embedding.weight.requires_grad and not model.item_table.requires_grad
    model.item_table = nn.Parameter(torch.zeros(N_ITEMS, D))  # reassignable again
    with pytest.raises(JPQTargetError, match="holds no JPQ tables"):
        unload_jpq(model)


def test_svd_codes_come_from_interactions_and_given_codes_are_used_as_is():
    rng = np.random.default_rng(0)
    inter = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.2).astype(np.float32))
    config = JPQConfig(M=4, ksub=8, code_assign="svd")
    model = TinyBPR()
    with pytest.raises(JPQConfigError, match="jpq_code_assign='svd' needs interactions="):
        apply_jpq(model, config, COUNTS)
    with pytest.raises(JPQConfigError, match=r"interactions has shape \(60, 40\)"):
        apply_jpq(model, config, COUNTS, interactions=inter.T)
    report = apply_jpq(model, config, COUNTS, interactions=inter)
    user, item = svd_codes(inter, 4, 8, config.seed)
    assert report.code_assign == "svd"
    assert torch.equal(model.user_embedding.codes, user) and torch.equal(model.item_embedding.codes, item)

    given = {"user": random_codes(N_USERS, 4, 8, 5), "item": random_codes(N_ITEMS, 4, 8, 6)}
    other = TinyBPR()
    assert apply_jpq(other, config, COUNTS, codes=given).code_assign == "given"
    assert torch.equal(other.item_embedding.codes, given["item"])
    with pytest.raises(JPQTargetError, match="already holds JPQ tables .* call unload_jpq"):
        apply_jpq(other, config, COUNTS, codes=given)


@pytest.mark.parametrize(
    "spoil, error, message",
    [
        (lambda m: setattr(m, "item_table", nn.Parameter(torch.randn(N_ITEMS, 18))), JPQConfigError,
         "embedding size 18 of item_table is not a multiple of jpq_M=4"),
        (lambda m: register_id_tables(ParamModel, user=["user_embedding"], item=["missing"]), JPQTargetError,
         "declared item table 'missing' does not exist"),
        (None, JPQConfigError, r"codes\['item'\]: codes hold values in \[0, 8\]; valid sub-ids are \[0, 8\)"),
        (None, JPQConfigError, r"codes\['user'\] has shape \(39, 4\)"),
        (None, JPQConfigError, r"counts=.* lacks a positive integer ID count for \['item'\]"),
    ],
)
def test_one_bad_target_leaves_the_model_untouched(spoil, error, message):
    torch.manual_seed(0)
    model = ParamModel()
    codes = None
    counts = COUNTS
    if spoil is not None:
        spoil(model)
    elif "values" in message:
        codes = {"user": random_codes(N_USERS, 4, 8, 0), "item": random_codes(N_ITEMS, 4, 8, 0).long()}
        codes["item"][-1, -1] = 8  # one sub-id out of range
    elif "shape" in message:
        codes = {"user": random_codes(N_USERS - 1, 4, 8, 0), "item": random_codes(N_ITEMS, 4, 8, 0)}
    else:
        counts = {"user": N_USERS}
    before = snapshot(model)
    with pytest.raises(error, match=message):
        apply_jpq(model, CONFIG, counts, codes=codes)
    assert_unchanged(model, before)


def test_load_refuses_mismatches_in_one_line_and_changes_nothing(tmp_path):
    source = ParamModel()
    apply_jpq(source, CONFIG, COUNTS)
    state = jpq_state_dict(source)

    bpr = TinyBPR()
    apply_jpq(bpr, CONFIG, COUNTS)
    state_bpr = jpq_state_dict(bpr)
    bigger = TinyBPR(n_users=N_USERS + 1)  # other rows
    before = snapshot(bigger)
    with pytest.raises(JPQCheckpointError, match=r"'user_embedding' is a embedding \[40x16\] .* \[41, 16\]") as err:
        load_jpq(bigger, state_bpr)
    assert "\n" not in str(err.value)
    assert_unchanged(bigger, before)

    renamed = {**state, "tables": [{**t, "path": t["path"].replace("item_table", "item_tab")} for t in state["tables"]]}
    target = ParamModel()
    before = snapshot(target)
    with pytest.raises(JPQCheckpointError, match=r"checkpoint table 'item_tab' is not in model ParamModel"):
        load_jpq(target, renamed)
    with pytest.raises(JPQCheckpointError, match="state is not a jpq_state_dict"):
        load_jpq(target, target.state_dict())
    bad_codes = {**state, "tables": [{**t, "codes": t["codes"][:-1]} for t in state["tables"]]}
    with pytest.raises(JPQCheckpointError, match=r"has codes \[39, 4\]"):
        load_jpq(target, bad_codes)
    assert_unchanged(target, before)

    compressed = ParamModel()
    apply_jpq(compressed, JPQConfig(M=2, ksub=8, code_assign="random"), COUNTS)
    with pytest.raises(JPQCheckpointError, match="has M=4 ksub=8; model ParamModel has M=2 ksub=8"):
        load_jpq(compressed, state)


def test_load_into_a_compressed_model_copies_codes_and_sub_embeddings():
    source, target = TinyBPR(), TinyBPR()
    apply_jpq(source, CONFIG, COUNTS)
    apply_jpq(target, JPQConfig(M=4, ksub=8, code_assign="random", seed=99, split_dropout=0.0), COUNTS)
    train(source, steps=2)
    load_jpq(target, jpq_state_dict(source))
    u, i, _ = batch(2)
    torch.testing.assert_close(target(u, i), source(u, i), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [TinyBPR, ParamModel, DictModel])
def test_compressed_model_deepcopies_and_pickles(cls):
    model = cls()
    apply_jpq(model, CONFIG, COUNTS)
    u, i, _ = batch(3)
    expected = model(u, i)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(twin).__name__ == cls.__name__ and isinstance(twin, cls)
        torch.testing.assert_close(twin(u, i), expected, rtol=0, atol=0)
        losses = train(twin, steps=3)
        assert losses[-1] < losses[0]
        torch.testing.assert_close(model(u, i), expected, rtol=0, atol=0)  # the twin owns its own tables
        if cls is ParamModel:
            with pytest.raises(AttributeError, match="JPQ-compressed"):
                twin.item_table = nn.Parameter(torch.zeros(N_ITEMS, D))
        trained = twin(u, i).detach()
        unload_jpq(twin)
        assert type(twin) is cls
        torch.testing.assert_close(twin(u, i), trained, rtol=0, atol=0)


def test_subclassing_a_swapped_class_again_does_not_recurse():
    model = ParamModel()
    apply_jpq(model, CONFIG, COUNTS)
    model.__class__ = type("Again", (type(model),), {})
    model.note = "set through both __setattr__ layers"  # super(type(self), self) recursed forever here
    assert model.note.startswith("set")
    with pytest.raises(AttributeError, match="item_table is a JPQ-compressed table"):
        model.item_table = nn.Parameter(torch.zeros(N_ITEMS, D))


def test_ksub_above_uint16_is_refused_naming_the_limit():
    assert JPQConfig(ksub=2**16).ksub == 65536
    with pytest.raises(JPQConfigError, match=r"jpq_ksub=65537 is invalid; it must be an integer in \[2, MAX_KSUB=65536\]"):
        JPQConfig(ksub=2**16 + 1)


def test_readme_example_runs_and_round_trips(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Any PyTorch model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 15
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "trainable params" in capsys.readouterr().out
    model, fresh, u, i = namespace["model"], namespace["fresh"], namespace["u"], namespace["i"]
    assert isinstance(fresh.item_embedding, nn.Embedding) and isinstance(model.item_embedding, JPQEmbedding)
    torch.testing.assert_close(fresh(u, i), model(u, i), rtol=0, atol=0)


def test_saved_state_keeps_split_dropout():
    model = TinyBPR()
    apply_jpq(model, JPQConfig(M=4, ksub=8, code_assign="random", split_dropout=0.25), COUNTS)
    state = jpq_state_dict(model)
    assert {t["split_dropout"] for t in state["tables"]} == {0.25}
    fresh = TinyBPR()
    load_jpq(fresh, state)
    assert {m.split_dropout for m in jpq_modules(fresh).values()} == {0.25}


def test_a_count_that_matches_no_table_is_refused_before_any_change():
    model = TinyBPR()
    with pytest.raises(JPQTargetError, match=rf"counts user=107 match no table of model TinyBPR .*{N_USERS}"):
        apply_jpq(model, CONFIG, {"user": 107, "item": N_ITEMS})
    assert isinstance(model.user_embedding, nn.Embedding) and isinstance(model.item_embedding, nn.Embedding)


@pytest.mark.parametrize("fill, match", [(np.nan, "1 non-finite entries"), (0.0, "has no nonzero entry")])
def test_interactions_without_usable_values_are_refused(fill, match):
    inter = sp.random(N_USERS, N_ITEMS, density=0.2, format="csr", random_state=0, data_rvs=np.ones)
    inter.data[0] = fill
    if fill == 0.0:
        inter.data[:] = 0.0
    model = TinyBPR()
    with pytest.raises(JPQConfigError, match=match):
        apply_jpq(model, JPQConfig(M=4, ksub=8, code_assign="svd"), COUNTS, interactions=inter)
    assert isinstance(model.item_embedding, nn.Embedding)


def test_config_may_be_a_dict_of_its_fields():
    model = TinyBPR()
    report = apply_jpq(model, {"M": 4, "ksub": 8, "code_assign": "random"}, COUNTS)
    assert (report.M, report.ksub) == (4, 8)
    with pytest.raises(JPQConfigError, match=r"unknown keys \['Mm'\]"):
        apply_jpq(TinyBPR(), {"Mm": 4}, COUNTS)


class OddNames(nn.Module):
    """Tables the default rule cannot find by name (nor by shape: two tables of the item count)."""

    def __init__(self):
        super().__init__()
        self.people = nn.Embedding(N_USERS, D)
        self.things = nn.Embedding(N_ITEMS, D)
        self.things_bias_table = nn.Embedding(N_ITEMS, D)


def test_tables_argument_names_the_tables_without_the_registry():
    with pytest.raises(JPQTargetError, match="searched nn.Embedding modules"):
        apply_jpq(OddNames(), JPQConfig(M=4, ksub=16, code_assign="random"), counts={"user": N_USERS, "item": N_ITEMS})
    model = OddNames()
    apply_jpq(model, JPQConfig(M=4, ksub=16, code_assign="random"), counts={"user": N_USERS, "item": N_ITEMS},
              tables={"user": ["people"], "item": ["things"]})
    assert sorted(jpq_modules(model)) == ["people", "things"] and isinstance(model.things_bias_table, nn.Embedding)
    for bad, says in [({"user": "people"}, "is invalid; give {entity: [attribute paths]}"),
                      ({"shop": ["things"]}, "names entities ['shop']; valid: user, item"),
                      ({"user": ["nobody"]}, "declared user table 'nobody' does not exist")]:
        untouched = OddNames()
        with pytest.raises((JPQConfigError, JPQTargetError), match=says if "searched" in says else re.escape(says)):
            apply_jpq(untouched, JPQConfig(M=4, ksub=16, code_assign="random"), counts={"user": N_USERS, "item": N_ITEMS}, tables=bad)
        assert jpq_modules(untouched) == {}
