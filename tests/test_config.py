import pytest

from urecjpq_plugin.config import JPQConfig, JPQConfigError, jpq_enabled


def test_defaults():
    cfg = JPQConfig.from_mapping({})
    assert (cfg.M, cfg.ksub, cfg.code_assign, cfg.targets) == ("auto", 256, "auto", ("user", "item"))


def test_reads_yaml_and_command_line_forms():
    cfg = JPQConfig.from_mapping(
        {"jpq_M": "4", "jpq_ksub": 64.0, "jpq_code_assign": "random", "jpq_targets": "['item']", "seed": 7}
    )
    assert (cfg.M, cfg.ksub, cfg.code_assign, cfg.targets, cfg.seed) == (4, 64, "random", ("item",), 7)
    assert JPQConfig.from_mapping({"jpq_targets": "user,item"}).targets == ("user", "item")
    assert jpq_enabled({"jpq": "True"}) and jpq_enabled({"jpq": True}) and not jpq_enabled({})
    assert not jpq_enabled({"jpq": "false"})


@pytest.mark.parametrize(
    "mapping,match",
    [
        ({"jpq_M": 0}, "jpq_M=0 is invalid"),
        ({"jpq_M": "eight"}, "jpq_M='eight' is not an integer"),
        ({"jpq_ksub": 1}, r"jpq_ksub=1 is invalid; it must be an integer in \[2, "),
        ({"jpq_ksub": 2**33}, "jpq_ksub=8589934592 is invalid"),
        ({"jpq_code_assign": "kmeans++"}, "jpq_code_assign='kmeans\\+\\+' is unknown; valid: auto, svd_pq_cos, svd_pq, svd_pq_norm, svd, lightgcn_fit, random"),
        ({"jpq_targets": ["user", "items"]}, "unknown target 'items'; valid: user, item, image, text"),
        ({"jpq": "maybe"}, "jpq='maybe' is not a boolean"),
    ],
)
def test_bad_values_name_the_value_and_what_is_valid(mapping, match):
    with pytest.raises(JPQConfigError, match=match):
        JPQConfig.from_mapping(mapping) if "jpq" not in mapping else jpq_enabled(mapping)


def test_dim_must_split_into_M():
    with pytest.raises(JPQConfigError, match=r"embedding size 64 of user_embedding is not a multiple of jpq_M=5"):
        JPQConfig(M=5).check_dim(64, "user_embedding")
    JPQConfig(M=8).check_dim(64)


@pytest.mark.parametrize("key, close", [("jpq_Mm", "jpq_M"), ("jpq_ksubs", "jpq_ksub"), ("jpq_whatever", None)])
def test_unknown_jpq_keys_are_refused(key, close):
    with pytest.raises(JPQConfigError, match=key) as err:
        JPQConfig.from_mapping({"jpq": True, key: 8})
    assert (f"did you mean {close}" in str(err.value)) if close else "did you mean" not in str(err.value)

    class HostConfig:  # RecBole's and MMRec's Config keep their keys in final_config_dict
        final_config_dict = {"jpq": True, key: 8, "learning_rate": 0.1}

        def __getitem__(self, k):
            return self.final_config_dict[k]

    with pytest.raises(JPQConfigError, match=key):
        JPQConfig.from_mapping(HostConfig())
    assert JPQConfig.from_mapping({"jpq": True, "jpq_tables": {}, "other_key": 1}).ksub == 256
