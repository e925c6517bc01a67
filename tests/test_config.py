import pytest

from jobs.config import ConfigError, load_config


def test_defaults_load_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACTORY_CONFIG", raising=False)
    cfg = load_config()
    assert cfg.spark.master == "local[2]"
    assert cfg.lake_uri == str(tmp_path / ".state" / "lake")


def test_file_then_environment_override_defaults(tmp_path, monkeypatch):
    path = tmp_path / "f.toml"
    path.write_text('[spark]\nmaster = "local[1]"\n[train]\nepochs = 3\n')
    monkeypatch.setenv("FACTORY__TRAIN__EPOCHS", "5")
    cfg = load_config(path)
    assert cfg.spark.master == "local[1]" and cfg.train.epochs == 5


def test_unknown_key_is_rejected_with_the_known_keys(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text("[spark]\nmastr = 'x'\n")
    with pytest.raises(ConfigError, match="Unknown key.*mastr.*master"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs must be of type int"):
        load_config(overrides={"train.epochs": "many"})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_table_keys_from_environment_keep_their_case(monkeypatch):
    monkeypatch.setenv("FACTORY__LAKE__STORAGE_OPTIONS__AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("FACTORY__SPARK__EXTRA_CONF__spark.executor.memory", "4g")
    cfg = load_config(overrides={})
    assert cfg.lake.storage_options == {"AWS_ALLOW_HTTP": "true"}
    assert cfg.spark.extra_conf == {"spark.executor.memory": "4g"}


def test_the_removed_delta_spark_engine_switch_is_an_unknown_key():
    with pytest.raises(ConfigError, match="Unknown key.*engine"):
        load_config(overrides={"lake.engine": "delta-spark"})


def test_negative_training_sample_or_budget_is_rejected(tmp_path):
    (tmp_path / "f.toml").write_text("[train]\nmax_users = -1\n")
    with pytest.raises(ConfigError, match="train.max_users and train.minutes must be >= 0"):
        load_config(tmp_path / "f.toml")


def test_negative_train_threads_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.threads must be >= 0"):
        load_config(overrides={"train.threads": "-1"})


@pytest.mark.parametrize("value", ["1", "-1"])
def test_time_buckets_other_than_off_or_at_least_two_is_a_clear_error(value):
    with pytest.raises(ConfigError, match="train.time_buckets must be 0 \\(off\\) or >= 2"):
        load_config(overrides={"train.time_buckets": value})


def test_time_buckets_reach_the_encoder_config():
    from jobs.steps.train import encoder_config

    assert encoder_config(load_config().train, num_items=10, max_len=5).n_time_buckets == 0
    on = load_config(overrides={"train.time_buckets": "24"}).train
    assert encoder_config(on, num_items=10, max_len=5).n_time_buckets == 24
