import pytest
from omegaconf import OmegaConf

from geossm.config import (DEFAULTS, ConfigError, ConfigKeyError, apply_overrides,
                           describe_config, find_config, list_configs, load_config,
                           parse_override, parse_yaml, save_config)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_hold_the_standard_keys():
    cfg = load_config(None)
    for key in ("model", "data", "train", "eval", "output_dir", "seed", "device", "resume",
                "checkpoint", "deterministic"):
        assert key in cfg
    for key in ("name", "root", "split"):
        assert key in cfg.data
    for key in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "grad_clip",
                "amp", "num_workers"):
        assert key in cfg.train


def test_base_inheritance_chain_and_relative_paths(tmp_path):
    write(tmp_path / "_base_" / "a.yaml", "train: {epochs: 3, lr: 0.1}\nmodel: {name: A, depth: 2}\n")
    write(tmp_path / "_base_" / "b.yaml", "_base_: a.yaml\nmodel: {depth: 4}\nseed: 7\n")
    write(tmp_path / "_base_" / "c.yaml", "data: {name: D}\nseed: 9\n")
    cfg_path = write(tmp_path / "task" / "x.yaml",
                     "_base_: [../_base_/b.yaml, ../_base_/c]\ntrain: {lr: 1e-3}\n")
    cfg = load_config(cfg_path)
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-3)
    assert isinstance(cfg.train.lr, float)  # YAML 1.2 float, not the string '1e-3'
    assert cfg.model.name == "A" and cfg.model.depth == 4
    assert cfg.seed == 9  # later bases win
    assert cfg.data.name == "D" and cfg.data.split == "train"  # DEFAULTS underneath
    assert "_base_" not in cfg


def test_base_errors(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "_base_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="_base_ file not found: .*missing.yaml"):
        load_config(tmp_path / "c.yaml")
    write(tmp_path / "d.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "d.yaml")
    write(tmp_path / "e.yaml", "a: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "e.yaml")


def test_overrides():
    cfg = load_config(None, ["train.lr=0.5", "train.amp=false", "data.root=/data/x",
                             "model.name=M", "+model.depth=3", "eval.split=null",
                             "+extra.list=[1, 2]", "train.lr=2"])
    assert cfg.train.lr == 2 and cfg.train.amp is False and cfg.data.root == "/data/x"
    assert cfg.model.depth == 3 and cfg.eval.split is None
    assert list(cfg.extra.list) == [1, 2]
    assert load_config(None, ["resume=runs/x/last.pt"]).resume == "runs/x/last.pt"
    assert load_config(None, ["resume=true"]).resume is True


def test_a_lone_override_string_is_one_override_not_its_characters():
    cfg = load_config(None)
    assert apply_overrides(cfg, "train.lr=0.25").train.lr == 0.25


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigKeyError, match="unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(KeyError, match="unknown config key 'nope.deep.key'"):
        load_config(None, ["nope.deep.key=1"])


def test_struct_mode_after_loading():
    cfg = load_config(None)
    with pytest.raises(Exception, match="trian"):
        cfg.trian  # noqa: B018 - a typo in code fails loudly too


def test_override_type_and_syntax_errors():
    with pytest.raises(ConfigError, match="'train.epochs' expects an integer, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="'train.amp' expects true or false"):
        load_config(None, ["train.amp=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="is not a dotted key"):
        parse_override("train..x=1")
    with pytest.raises(ConfigError, match="'train.lr' is not a mapping"):
        load_config(None, ["+train.lr.x=1"])


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = write(tmp_path / "evil.yaml",
                 f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="refused YAML tag.*python/object/apply"):
        load_config(evil)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="refused YAML tag"):
        load_config(None, ["seed=!!python/object/new:os.getcwd []"])
    with pytest.raises(ConfigError, match="refused YAML tag"):
        parse_yaml("!!python/name:os.system")


def test_find_config_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOSSM_CONFIG_DIR", raising=False)
    local = write(tmp_path / "configs" / "seg" / "x.yaml", "seed: 1\n")
    assert find_config("seg/x") == local.resolve()
    assert find_config("seg/x.yaml") == local.resolve()
    assert find_config(local) == local.resolve()
    env_dir = tmp_path / "elsewhere"
    env_cfg = write(env_dir / "seg" / "x.yaml", "seed: 2\n")
    monkeypatch.setenv("GEOSSM_CONFIG_DIR", str(env_dir))
    assert find_config("seg/x") == env_cfg.resolve()
    with pytest.raises(FileNotFoundError, match="config 'nope' not found"):
        find_config("nope")


def test_repo_configs_are_found_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOSSM_CONFIG_DIR", raising=False)
    assert find_config("default").name == "default.yaml"
    assert find_config("_base_/runtime").parent.name == "_base_"


def test_list_configs_descriptions(tmp_path):
    write(tmp_path / "a.yaml", "description: From the key\nseed: 1\n")
    write(tmp_path / "sub" / "b.yaml", "# From the comment\n\nseed: 1\n")
    write(tmp_path / "c.yaml", "seed: 1\n")
    write(tmp_path / "_base_" / "runtime.yaml", "seed: 1\n")
    assert list_configs(tmp_path) == [("a", "From the key"), ("c", ""),
                                      ("sub/b", "From the comment")]
    assert describe_config(tmp_path / "a.yaml") == "From the key"
    with pytest.raises(FileNotFoundError, match="configs folder not found"):
        list_configs(tmp_path / "none")


def test_runtime_base_matches_defaults():
    base = OmegaConf.to_container(load_config("_base_/runtime"))
    assert base == OmegaConf.to_container(OmegaConf.create(DEFAULTS))


def test_save_config_roundtrip(tmp_path):
    cfg = load_config(None, ["+model.depth=3", "train.lr=0.25"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_describe_config_takes_the_whole_first_sentence_of_the_first_comment(tmp_path):
    write(tmp_path / "a.yaml", "# Default of `geossm train`: segmentation on the embedded\n"
                               "# synthetic data (e.g. 3 min). Details follow.\n#\n# More.\nseed: 1\n")
    assert describe_config(tmp_path / "a.yaml") == ("Default of `geossm train`: segmentation on "
                                                    "the embedded synthetic data (e.g. 3 min).")
    write(tmp_path / "b.yaml", "seed: 1\n# only a late comment, no full stop\n")
    assert describe_config(tmp_path / "b.yaml") == "only a late comment, no full stop"
