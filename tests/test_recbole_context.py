"""RecBole's context-aware models with jpq: true on ml-100k in RecBole's CTR setting (labelled AUC/LogLoss).

RecBole loads ml-100k's .user and .item features and the rating >= 4 labels for every context-aware
model (quick_start_config/context-aware_ml-100k.yaml); the token fields share one table per model.
"""

import glob
import os
import sys

import pytest
import torch

from urecjpq_plugin.row_ranges import RowRangeEmbedding, kept_rows_mask

from .test_recbole_models import build

# Every context-aware model RecBole 1.2.1 ships (checked against the package below).
CONTEXT_MODELS = ["FM", "DeepFM", "WideDeep", "NFM", "AFM", "PNN", "DCN", "DCNV2", "xDeepFM", "AutoInt", "FwFM",
                  "FNN", "FiGNN", "DSSM", "EulerNet", "KD_DAGFM", "FFM", "LR"]
USERS, ITEMS = 944, 1683  # ml-100k's ids, padding row included


def ctr_settings(recbole_env, **extra):
    # eval_batch_size: the 10k labelled validation/test pairs in a few batches
    return {**recbole_env, "epochs": 1, "eval_batch_size": 4096, **extra}


FIRST_ORDER = "first_order_linear.token_embedding_table.embedding"


def expected_tables(model, first_order="kept"):
    """{path: (field names, offsets, dims)} of the tables whose user/item rows are compressed, read from
    the model's own attributes, not from the plugin (first-order rows: kept by default)."""
    tables = {
        "token_embedding_table.embedding": (model.token_field_names, model.token_field_offsets, model.token_field_dims),
    }
    if first_order == "summed":
        tables[FIRST_ORDER] = (model.first_order_linear.token_field_names,
                               model.first_order_linear.token_field_offsets, model.first_order_linear.token_field_dims)
    ffm = getattr(model, "ffm", None)
    for i in range(len(getattr(ffm, "token_embeddings", []))):
        tables[f"ffm.token_embeddings.{i}"] = (ffm.token_feature_names, ffm.token_offsets, ffm.token_feature_dims)
    return tables


def shared_tables(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, RowRangeEmbedding)}


def test_the_list_is_every_context_aware_model_recbole_ships():
    import recbole.model.context_aware_recommender as context
    from recbole.model.abstract_recommender import ContextRecommender

    shipped = {n for n, c in vars(context).items() if isinstance(c, type) and issubclass(c, ContextRecommender)}
    assert shipped == set(CONTEXT_MODELS)


@pytest.mark.parametrize("model_name", CONTEXT_MODELS)
def test_model_trains_one_epoch_with_user_and_item_rows_compressed(model_name, recbole_env):
    from recbole.quick_start import quick_start
    from recbole.utils import get_trainer

    config, model, train, valid, test = build(model_name, ctr_settings(recbole_env, jpq=True))
    assert config["metrics"] == ["AUC", "LogLoss"] and train._dataset.user_num == USERS
    config["jpq"] = False  # the same model uncompressed, from the same seed: its kept rows are the reference
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    plain = quick_start.get_model(model_name)(config, train._dataset)
    config["jpq"] = True

    tables = shared_tables(model)
    assert set(tables) == set(expected_tables(model))
    for path, (fields, offsets, dims) in expected_tables(model).items():
        table = tables[path]
        spans = {f: (int(o), int(o) + int(d)) for f, o, d in zip(fields, offsets, dims)}
        assert [(r.field, r.entity, r.start, r.stop) for r in table.ranges] == sorted(
            [("user_id", "user", *spans["user_id"]), ("item_id", "item", *spans["item_id"])], key=lambda t: t[2])
        assert table.ranges[0].rows + table.ranges[1].rows == USERS + ITEMS
        keep = torch.ones(table.num_embeddings, dtype=torch.bool)
        for r in table.ranges:
            keep[r.start:r.stop] = False
        plain_weight = plain.get_submodule(path).weight
        assert torch.equal(table.kept_weight, plain_weight[keep])  # other fields' rows: as without the plugin
        assert table.weight.shape == plain_weight.shape
    if model_name == "DSSM":  # one table for both towers, user fields first: items sit after the user features
        assert [(r.start, r.stop) for r in tables["token_embedding_table.embedding"].ranges] == [(0, 944), (1031, 2714)]
    first_order = model.get_submodule(FIRST_ORDER)  # kept whole: a plain table, initialised as without the plugin
    assert type(first_order) is torch.nn.Embedding and torch.equal(first_order.weight, plain.get_submodule(FIRST_ORDER).weight)

    read = read_tables(model_name, tables)
    before = {n: [p.detach().clone() for p in model.get_submodule(n).parameters()] for n in read}
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert 0.0 < result["auc"] < 1.0 and 0.0 < result["logloss"] < 5.0
    changed = {n: [not torch.equal(b, p) for b, p in zip(before[n], model.get_submodule(n).parameters())] for n in read}
    for path in read:
        # FFM never reads a feature's vector for its own field (v_{i,F(i)}): ffm.token_embeddings.0's user
        # rows and .1's item rows stay put, with or without the plugin. Elsewhere every part learns.
        assert all(changed[path]) or (path.startswith("ffm.") and sum(changed[path]) == 2), (path, changed[path])


# Models whose forward adds first_order_linear; the others build it (ContextRecommender does) but never read it.
READS_FIRST_ORDER = {"AFM", "AutoInt", "DeepFM", "FFM", "FM", "FwFM", "LR", "NFM", "WideDeep", "xDeepFM"}


def read_tables(model_name, tables):
    """The shared tables ``model_name``'s forward reads (LR reads only first-order weights, FFM its field-aware tables)."""
    read = {n for n in tables if n.startswith("ffm.")}
    if model_name not in ("LR", "FFM"):
        read.add("token_embedding_table.embedding")
    if model_name in READS_FIRST_ORDER:
        read.add(FIRST_ORDER)
    return read



def test_kept_rows_are_updated_exactly_as_without_the_plugin(recbole_env):
    """One Adam step of FM from the same weights: kept rows get the plain model's gradient and update."""
    from recbole.quick_start import quick_start

    settings = ctr_settings(recbole_env, jpq=True, jpq_split_dropout=0.0)
    config, model, train, _, _ = build("FM", settings)
    config["jpq"] = False
    plain = quick_start.get_model("FM")(config, train._dataset)
    tables = shared_tables(model)
    with torch.no_grad():  # the plain model reads exactly what the compressed one decodes
        for name, param in plain.named_parameters():
            table = name[: -len(".weight")]
            param.copy_(tables[table].weight if table in tables else model.get_parameter(name))
    batch = next(iter(train))
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (model, plain)]
    losses = [m.calculate_loss(batch) for m in (model, plain)]
    assert torch.equal(losses[0], losses[1])
    for loss in losses:
        loss.backward()
    keep = {path: kept_rows_mask(table.ranges, table.num_embeddings) for path, table in tables.items()}
    for path, table in tables.items():
        plain_table = plain.get_submodule(path).weight
        assert table.kept_weight.grad.abs().sum() > 0
        assert torch.equal(table.kept_weight.grad, plain_table.grad[keep[path]])
    for optimizer in optimizers:
        optimizer.step()
    for path, table in tables.items():
        assert torch.equal(table.kept_weight, plain.get_submodule(path).weight[keep[path]])


@pytest.mark.parametrize("targets", [["user", "item"], ["item"]])
def test_checkpoint_reloads_with_identical_metrics(targets, recbole_env, monkeypatch):
    from recbole.utils import get_trainer

    from urecjpq_plugin import assign
    from urecjpq_plugin.hosts.recbole.hook import load_data_and_model, run

    result = run("FM", "ml-100k", config_dict=ctr_settings(recbole_env, jpq=True, jpq_targets=targets))
    (path,) = sorted(glob.glob(os.path.join(recbole_env["checkpoint_dir"], "*.pth")))
    state = torch.load(path, weights_only=False)["state_dict"]
    assert "token_embedding_table.embedding.weight" not in state
    assert state["token_embedding_table.embedding.parts.0.codes"].dtype == torch.uint8
    parts = sorted(k for k in state if k.startswith("token_embedding_table.embedding.parts.") and k.endswith(".codes"))
    assert len(parts) == len(targets)

    def no_svd(*args, **kwargs):
        raise AssertionError("reloading a checkpoint recomputed SVD codes")

    monkeypatch.setattr(assign, "svd_codes", no_svd)  # the checkpoint brings the codes
    config, model, _, _, _, test_data = load_data_and_model(path)
    table = model.token_embedding_table.embedding
    assert [r.field for r in table.ranges] == (["user_id", "item_id"] if targets == ["user", "item"] else ["item_id"])
    assert torch.equal(table.parts[0].codes, state["token_embedding_table.embedding.parts.0.codes"])
    reloaded = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(
        test_data, load_best_model=False)
    assert dict(reloaded) == dict(result["test_result"])


def test_plain_checkpoint_into_compressed_model_names_the_shared_table(recbole_env):
    from urecjpq_plugin.hosts.recbole.hook import JPQCheckpointError

    _, plain, *_ = build("FM", ctr_settings(recbole_env))
    _, compressed, *_ = build("FM", ctr_settings(recbole_env, jpq=True))
    with pytest.raises(JPQCheckpointError, match="uncompressed table token_embedding_table.embedding.weight"):
        compressed.load_state_dict(plain.state_dict())


def test_tables_command_shows_compressed_and_kept_row_ranges(recbole_env, capsys, monkeypatch):
    from urecjpq_plugin.cli import main
    from urecjpq_plugin.inject import count_trainable

    monkeypatch.setattr(sys, "argv", ["urecjpq"])
    assert main(["tables", "--model", "FM"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {(line.split()[0], line.split()[3]): line.split()[1:] for line in out[2:-2]}
    table = "token_embedding_table.embedding"
    assert rows[(table, "user_id")][:4] == ["0:944", "10", "user_id", "user"]
    assert rows[(table, "item_id")][:4] == ["944:2627", "10", "item_id", "item"]
    assert "compressed" in rows[(table, "item_id")] and rows[(table, "age")][-1] == "kept"
    assert rows[(FIRST_ORDER, "user_id")] == ["0:944", "1", "user_id", "-", "kept"]
    # user+item rows: (944 + 1683) x (10 + 1) -> per entity 256 x 10 (M=5 splits of 2) + the kept 1-d rows
    assert out[-2] == "user/item rows: trainable parameters 28,897 -> 7,747 (26.81%)"
    before, after = (int(n.replace(",", "")) for n in out[-1].split("parameters ")[1].split(" (")[0].split(" -> "))
    _, model, *_ = build("FM", ctr_settings(recbole_env, jpq=True))
    assert out[-1].startswith("M=5 ksub=256") and after == count_trainable(model) and before - after == 28897 - 7747


def test_a_model_without_the_id_fields_refuses_in_one_line(recbole_env):
    from urecjpq_plugin import JPQTargetError
    from urecjpq_plugin.hosts.recbole.context import plan_ranges

    _, plain, *_ = build("FM", ctr_settings(recbole_env))
    config = {"USER_ID_FIELD": "uid", "ITEM_ID_FIELD": "iid"}
    with pytest.raises(JPQTargetError) as err:
        plan_ranges(plain, config, {"user": USERS, "item": ITEMS}, ["user", "item"])
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("model FM has no token table holding fields ['iid', 'uid'] for jpq_targets=['user', 'item']")
    assert "searched FMEmbedding token tables" in message and "user_id" in message


def test_bad_M_for_the_embedding_size_is_one_line(recbole_env):
    from urecjpq_plugin.config import JPQConfigError

    with pytest.raises(JPQConfigError, match=r"embedding size 10 of token_embedding_table.embedding is not a multiple "
                                             r"of jpq_M=3; choose jpq_M among \[1, 2, 5, 10\]"):
        build("FM", ctr_settings(recbole_env, jpq=True, jpq_M=3))


def test_bench_runner_reports_auc_logloss_and_user_item_row_params(recbole_env, tmp_path):
    from urecjpq_bench.hosts import check_result
    from urecjpq_bench.recbole_runner import run_one

    settings = {**ctr_settings(recbole_env), "data_path": recbole_env["data_path"]}
    plain = check_result(run_one("FM", "ml-100k", {**settings, "jpq": False}, str(tmp_path / "base")))
    jpq = check_result(run_one("FM", "ml-100k", {**settings, "jpq": True}, str(tmp_path / "jpq")))
    assert set(plain["metrics"]) == {"auc", "logloss"} and 0.5 < jpq["metrics"]["auc"] < 1.0
    # user+item rows of the 10-d table and the kept 1-d first-order one: (944 + 1683) x 11 -> 2 x 256 x 10 + 2627
    assert plain["params"]["id_tables"] == 28897 and jpq["params"]["id_tables"] == 7747
    assert plain["params"]["total"] - jpq["params"]["total"] == 28897 - 7747


def test_first_order_rows_can_be_summed_splits(recbole_env, monkeypatch):
    """The measured alternative: first-order user/item rows as per-split scalars that add up (M x ksub each)."""
    from recbole.utils import get_trainer

    from urecjpq_plugin.hosts.recbole import context as recbole_context
    from urecjpq_plugin.inject import count_trainable

    monkeypatch.setattr(recbole_context, "FIRST_ORDER_ROWS", "summed")
    config, model, train, valid, _ = build("FM", ctr_settings(recbole_env, jpq=True))
    tables = shared_tables(model)
    assert set(tables) == set(expected_tables(model, "summed"))
    first_order = tables[FIRST_ORDER]
    assert [(r.field, r.start, r.stop) for r in first_order.ranges] == [("user_id", 0, 944), ("item_id", 944, 2627)]
    assert [tuple(p.sub_embeddings.shape) for p in first_order.parts] == [(5, 256, 1), (5, 256, 1)]  # M=auto=5
    assert recbole_context.id_row_params(model, config) == 7680 and count_trainable(model) == 30889 - 28897 + 7680
    ids = torch.arange(first_order.num_embeddings)
    model.eval()  # no split dropout
    expected = first_order.parts[0].weight.sum(1, keepdim=True)  # w(i) = sum over splits
    assert torch.allclose(first_order(ids)[:944], expected) and torch.equal(first_order(ids), first_order.weight)
    before = [p.sub_embeddings.detach().clone() for p in first_order.parts]
    get_trainer(config["MODEL_TYPE"], config["model"])(config, model).fit(train, valid, saved=False, show_progress=False)
    assert all(not torch.equal(b, p.sub_embeddings) for b, p in zip(before, first_order.parts))


def test_auto_codes_of_context_models_are_svd_pq(recbole_env, monkeypatch):
    # measured on ml-100k's CTR setting (six models, 3 seeds): svd_pq beat svd on every one; general
    # models keep auto's density rule (svd on ml-100k)
    from urecjpq_plugin.hosts.recbole import hook

    asked = []
    real = hook.compute_codes
    monkeypatch.setattr(hook, "compute_codes", lambda jcfg, *a, **k: asked.append(jcfg.code_assign) or real(jcfg, *a, **k))
    build("FM", ctr_settings(recbole_env, jpq=True))
    build("FM", ctr_settings(recbole_env, jpq=True, jpq_code_assign="svd"))
    assert asked == ["svd_pq", "svd"]
