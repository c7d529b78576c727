"""Every listed RecBole model trains on ml-100k with compressed tables (one short epoch each)."""

import pytest
import torch

from urecjpq_plugin.inject import count_trainable, jpq_modules, list_candidate_tables, match_id_tables

MODELS = ["BPR", "LightGCN", "NGCF", "SGL", "NCL", "SimpleX", "ENMF", "NeuMF", "DGCF", "LINE"]
# RecBole's NCL default (1000 clusters) exceeds ml-100k's 944 users, with or without jpq.
# DGCF's default 2 layers x 2 routing iterations cost minutes per epoch on 2 CPU cores.
MODEL_SETTINGS = {"NCL": {"num_clusters": 100}, "DGCF": {"n_layers": 1, "n_iterations": 1}}


def build(model_name, config_dict):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import init_seed

    config = Config(model=model_name, dataset="ml-100k", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = quick_start.get_model(model_name)(config, train._dataset)
    return config, model, train, valid, test


@pytest.mark.parametrize("model_name", MODELS)
def test_model_trains_with_compressed_tables(model_name, recbole_env):
    from recbole.utils import get_trainer

    from recbole.quick_start import quick_start

    settings = {**recbole_env, "epochs": 1, "jpq_ksub": 64, **MODEL_SETTINGS.get(model_name, {})}
    config, model, train, valid, test = build(model_name, {**settings, "jpq": True})
    config["jpq"] = False  # the same model uncompressed, on the same data, for the expected counts
    plain = quick_start.get_model(model_name)(config, train._dataset)
    config["jpq"] = True
    counts = {"user": train._dataset.user_num, "item": train._dataset.item_num}
    plain_tables = match_id_tables(list_candidate_tables(plain), counts, ["user", "item"])
    assert plain_tables, "the uncompressed model should have ID tables"
    expected = count_trainable(plain) - sum(r.shape[0] * r.shape[1] for r in plain_tables)
    expected += sum(64 * r.shape[1] for r in plain_tables)
    assert count_trainable(model) == expected
    assert match_id_tables(list_candidate_tables(model), counts, ["user", "item"]) == []
    assert len(jpq_modules(model)) == len(plain_tables)
    before = {n: m.sub_embeddings.detach().clone() for n, m in jpq_modules(model).items()}

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert 0.0 < result["recall@20"] <= 1.0 and 0.0 < result["ndcg@20"] <= 1.0
    moved = [n for n, m in jpq_modules(model).items() if not torch.equal(before[n], m.sub_embeddings)]
    assert moved, "training should update the sub-embeddings"


def test_every_general_recommender_is_compressed_or_refused(recbole_env):
    """Models with user/item tables get them swapped; the rest refuse jpq with a clear error."""
    import recbole.model.general_recommender as general
    from recbole.config import Config
    from recbole.quick_start import quick_start

    from urecjpq_plugin import JPQTargetError

    _, _, train, _, _ = build("BPR", recbole_env)  # one dataset for all: construction only needs it
    others = sorted(n for n in dir(general) if n[0].isupper() and n not in MODELS)
    swapped, refused = [], []
    for name in others:
        config = Config(model=name, dataset="ml-100k", config_dict={**recbole_env, "jpq": True, "jpq_ksub": 16})
        try:
            model = quick_start.get_model(name)(config, train._dataset)
        except JPQTargetError as err:
            assert f"model {name} has no ID table" in str(err)
            refused.append(name)
            continue
        counts = {"user": train._dataset.user_num, "item": train._dataset.item_num}
        assert jpq_modules(model) and not match_id_tables(list_candidate_tables(model), counts, ["user", "item"])
        swapped.append(name)
    assert {"ConvNCF", "FISM", "NAIS", "NNCF", "SpectralCF", "CDAE", "MacridVAE"} <= set(swapped)
    assert {"Pop", "ItemKNN", "EASE", "MultiVAE"} <= set(refused)
