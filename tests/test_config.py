"""Tests for the typed config mechanism (recfunnel.config) on small example configs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from recfunnel.config import (
    apply_overrides,
    config_from_json,
    describe,
    from_dict,
    load_config,
    param,
    save_config,
    section,
    to_dict,
)
from recfunnel.errors import ConfigError

# The example configs live at module level: get_type_hints resolves the string annotations
# (from __future__ import annotations) in the module's namespace.


@dataclass(frozen=True)
class Optim:
    name: Literal["adam", "sgd"] = param("adam", "Optimizer.")
    betas: tuple[float, float] = param((0.9, 0.999), "Adam betas.")


@dataclass(frozen=True)
class Train:
    lr: float = param(1e-3, "Learning rate.")
    epochs: int = param(10, "Passes over the training data.")
    loss: Literal["bce", "bpr", "softmax"] = param("bpr", "Training loss.")
    ks: tuple[int, ...] = param((50, 100), "Recall cut-offs.")
    tags: tuple[str, ...] = param((), "Free-form run tags.")
    seed: int | None = param(None, "Random seed; none draws one.")
    optim: Optim = section(Optim, "Optimizer settings.")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Pipeline:
    train: Train = section(Train, "Training.")
    name: str = param("run", "Run name.")
    use_x: bool = param(False, "Use the x features.")

    def validate(self) -> None:
        if self.use_x and self.train.loss == "softmax":
            raise ConfigError("use_x does not work with loss 'softmax'")


@dataclass(frozen=True)
class Undocumented:
    a: int = 1
    b: str = param("x", "Documented.")


@dataclass
class NotFrozen:
    a: int = 1


def test_defaults() -> None:
    cfg = load_config(Pipeline)
    assert cfg == Pipeline()
    assert cfg.train.lr == 1e-3
    assert cfg.train.ks == (50, 100)
    assert cfg.train.seed is None
    assert cfg.train.optim.name == "adam"
    assert from_dict(Pipeline, {}) == Pipeline()


def test_frozen() -> None:
    cfg = Pipeline()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 0.5  # type: ignore[misc]


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'name = "exp1"\n'
        "use_x = true\n"
        "[train]\n"
        "lr = 1\n"  # an int is fine for a float field
        "epochs = 3\n"
        'loss = "bce"\n'
        "ks = [10, 20]\n"
        "seed = 7\n"
        "[train.optim]\n"
        'name = "sgd"\n'
        "betas = [0.5, 0.6]\n"
    )
    cfg = load_config(Pipeline, path)
    assert cfg.name == "exp1"
    assert cfg.use_x is True
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.train.loss == "bce"
    assert cfg.train.ks == (10, 20)
    assert cfg.train.seed == 7
    assert cfg.train.optim == Optim(name="sgd", betas=(0.5, 0.6))
    assert cfg.train.tags == ()  # untouched keys keep their defaults


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 3\nlr = 0.5\n")
    cfg = load_config(Pipeline, str(path), ["--train.epochs=4"])
    assert cfg.train.epochs == 4  # the override wins over the file
    assert cfg.train.lr == 0.5  # the file wins over the default


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found: .*nope.toml"):
        load_config(Pipeline, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(Pipeline, bad)


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Pipeline, path)
    msg = str(err.value)
    assert "run.toml" in msg
    assert "'train.lrr'" in msg
    assert "did you mean 'train.lr'" in msg
    assert "lr, epochs, loss, ks, tags, seed, optim (section)" in msg

    path.write_text("[trian]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'.*top level: train"):
        load_config(Pipeline, path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"train": {"epochs": "3"}}, r"train\.epochs: expected int, got '3'"),
        ({"train": {"epochs": 3.0}}, r"train\.epochs: expected int, got 3\.0"),
        ({"train": {"epochs": True}}, r"train\.epochs: expected int, got True"),
        ({"use_x": 1}, r"use_x: expected bool, got 1"),
        ({"use_x": "true"}, r"use_x: expected bool, got 'true'"),
        ({"train": {"lr": "1e-3"}}, r"train\.lr: expected float, got '1e-3'"),
        ({"train": {"ks": "50,100"}}, r"train\.ks: expected a list of int, got '50,100'"),
        ({"train": {"ks": [50, "x"]}}, r"train\.ks\[1\]: expected int, got 'x'"),
        ({"train": {"optim": {"betas": [0.9]}}}, r"train\.optim\.betas: expected a list of 2"),
        ({"train": {"seed": "7"}}, r"train\.seed: expected int or none, got '7'"),
        ({"train": 3}, r"train: expected a table of keys \(lr, epochs"),
        ({"name": 5}, r"name: expected str, got 5"),
    ],
)
def test_bad_type(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        from_dict(Pipeline, data)


def test_literal_violation() -> None:
    with pytest.raises(
        ConfigError, match=r"train\.loss: expected one of 'bce', 'bpr', 'softmax', got 'hinge'"
    ):
        from_dict(Pipeline, {"train": {"loss": "hinge"}})
    with pytest.raises(ConfigError, match=r"train\.loss: expected one of .*got 'hinge'"):
        apply_overrides(Pipeline(), ["--train.loss=hinge"])


def test_from_dict_where_prefix() -> None:
    with pytest.raises(ConfigError, match=r"stage\.train\.epochs: expected int"):
        from_dict(Train, {"epochs": "x"}, where="stage.train")


def test_overrides_each_type() -> None:
    cfg = apply_overrides(
        Pipeline(),
        [
            "--train.lr=1e-2",
            "train.epochs=20",  # the -- is optional
            "--train.loss=softmax",
            "--train.ks=50,100,200",
            "--train.tags=a, b",
            "--train.seed=3",
            "--name=exp=2",  # only the first = splits key from value
            "--use_x=no",
            "--train.optim.name=sgd",  # depth 2
            "--train.optim.betas=0.8,0.9",
        ],
    )
    assert cfg.train.lr == 0.01
    assert cfg.train.epochs == 20
    assert cfg.train.loss == "softmax"
    assert cfg.train.ks == (50, 100, 200)
    assert cfg.train.tags == ("a", "b")
    assert cfg.train.seed == 3
    assert cfg.name == "exp=2"
    assert cfg.use_x is False
    assert cfg.train.optim == Optim(name="sgd", betas=(0.8, 0.9))


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True)]
    + [("false", False), ("0", False), ("no", False)],
)
def test_override_bool(text: str, value: bool) -> None:
    assert apply_overrides(Pipeline(), [f"--use_x={text}"]).use_x is value


def test_override_none_and_empty_tuple() -> None:
    cfg = apply_overrides(Pipeline(), ["--train.seed=5", "--train.tags=x"])
    cfg = apply_overrides(cfg, ["--train.seed=none", "--train.tags="])
    assert cfg.train.seed is None
    assert cfg.train.tags == ()
    assert apply_overrides(cfg, ["--train.seed=null"]).train.seed is None


def test_override_keeps_original_and_other_fields() -> None:
    base = Pipeline()
    cfg = apply_overrides(base, ["--train.epochs=2"])
    assert base.train.epochs == 10
    assert cfg.train.lr == base.train.lr and cfg.name == base.name
    assert apply_overrides(base, []) == base


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--train.epochs=2.5", r"train\.epochs: expected int, got '2\.5'"),
        ("--train.lr=fast", r"train\.lr: expected float, got 'fast'"),
        ("--use_x=maybe", r"use_x: expected bool \(true/1/yes/false/0/no\), got 'maybe'"),
        ("--train.ks=50,x", r"train\.ks\[1\]: expected int, got 'x'"),
        ("--train.seed=abc", r"train\.seed: expected int or none, got 'abc'"),
        ("--train.optim.betas=1", r"train\.optim\.betas: expected a list of 2"),
    ],
)
def test_override_bad_value(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(Pipeline(), [override])


def test_override_unknown_key() -> None:
    with pytest.raises(ConfigError) as err:
        apply_overrides(Pipeline(), ["--train.optim.nmae=sgd"])
    msg = str(err.value)
    assert "'train.optim.nmae'" in msg
    assert "did you mean 'train.optim.name'" in msg
    assert "valid keys in [train.optim]: name, betas" in msg

    with pytest.raises(ConfigError, match=r"'zzz'; valid keys at the top level: train \(section\)"):
        apply_overrides(Pipeline(), ["--zzz=1"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--train.lr", r"has no value; write it as --train\.lr=VALUE"),
        ("--train..lr=1", r"not a dotted key"),
        ("--train=3", r"'train' is a section; .*KEY one of: lr, epochs"),
        ("--name.first=a", r"'name\.first': 'name' is a value \(str\), not a section"),
    ],
)
def test_override_malformed(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(Pipeline(), [override])


def test_validate_hook(tmp_path: Path) -> None:
    # A nested section's error is prefixed with its path.
    with pytest.raises(ConfigError, match=r"^train: lr must be > 0, got -1\.0$"):
        from_dict(Pipeline, {"train": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"^train: lr must be > 0"):
        apply_overrides(Pipeline(), ["--train.lr=0"])
    # A hook that looks across sections.
    with pytest.raises(ConfigError, match="use_x does not work with loss 'softmax'"):
        apply_overrides(Pipeline(), ["--use_x=true", "--train.loss=softmax"])
    # load_config validates the final result, so an override may repair the file.
    path = tmp_path / "run.toml"
    path.write_text("[train]\nlr = -1.0\n")
    assert load_config(Pipeline, path, ["--train.lr=0.1"]).train.lr == 0.1
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(Pipeline, path)


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(
        Pipeline(), ["--train.seed=3", "--train.ks=5,10", "--train.tags=a,b", "--use_x=1"]
    )
    path = tmp_path / "run" / "config.json"
    save_config(cfg, path)
    assert config_from_json(Pipeline, path) == cfg
    assert config_from_json(Pipeline, path).train.ks == (5, 10)  # tuples, not lists
    assert json.loads(path.read_text()) == to_dict(cfg)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind

    # None is kept as null and read back as None.
    save_config(Pipeline(), path)
    assert json.loads(path.read_text())["train"]["seed"] is None
    assert config_from_json(Pipeline, path) == Pipeline()


def test_json_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config_from_json(Pipeline, tmp_path / "missing.json")
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: invalid JSON"):
        config_from_json(Pipeline, path)
    path.write_text('{"train": {"bogus": 1}}')
    with pytest.raises(ConfigError, match=r"config.json: unknown config key 'train\.bogus'"):
        config_from_json(Pipeline, path)


def test_to_dict() -> None:
    assert to_dict(Pipeline()) == {
        "train": {
            "lr": 1e-3,
            "epochs": 10,
            "loss": "bpr",
            "ks": [50, 100],
            "tags": [],
            "seed": None,
            "optim": {"name": "adam", "betas": [0.9, 0.999]},
        },
        "name": "run",
        "use_x": False,
    }


def test_describe() -> None:
    rows = describe(Pipeline)
    assert rows == [
        ("train.lr", "0.001", "Learning rate."),
        ("train.epochs", "10", "Passes over the training data."),
        ("train.loss", "bpr", "Training loss."),
        ("train.ks", "50,100", "Recall cut-offs."),
        ("train.tags", "", "Free-form run tags."),
        ("train.seed", "none", "Random seed; none draws one."),
        ("train.optim.name", "adam", "Optimizer."),
        ("train.optim.betas", "0.9,0.999", "Adam betas."),
        ("name", "run", "Run name."),
        ("use_x", "false", "Use the x features."),
    ]
    # Every default is written the way an override takes it.
    overrides = [f"--{key}={default}" for key, default, _ in rows]
    assert apply_overrides(Pipeline(), overrides) == Pipeline()


def test_every_example_field_has_help() -> None:
    for cls in (Pipeline, Train, Optim):
        assert all(help_ for _, _, help_ in describe(cls)), cls
    assert describe(Undocumented) == [("a", "1", ""), ("b", "x", "Documented.")]


def test_programming_errors_are_not_config_errors() -> None:
    with pytest.raises(TypeError, match="frozen"):
        from_dict(NotFrozen, {})
    with pytest.raises(TypeError, match="sequence of strings"):
        apply_overrides(Pipeline(), "--name=x")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["recall", "prerank", "rank"])
def test_every_stage_checks_its_valid_metric(key):
    from recfunnel.config import load_config
    from recfunnel.run import PipelineConfig

    with pytest.raises(ConfigError, match=f"{key}.valid_metric"):
        load_config(PipelineConfig, None, [f"--{key}.valid_metric=auc@20"])


def test_a_saved_config_without_a_newer_field_reads_the_value_it_meant(tmp_path) -> None:
    """rank.cross_rank came after runs were saved full-rank: a saved config without the key
    reads None (how it was trained), a new config gets the default, 32."""
    from recfunnel.run import PipelineConfig

    saved = to_dict(PipelineConfig())
    del saved["rank"]["cross_rank"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert config_from_json(PipelineConfig, path).rank.cross_rank is None
    assert PipelineConfig().rank.cross_rank == 32
    saved["rank"]["cross_rank"] = 16  # a saved value is kept
    path.write_text(json.dumps(saved))
    assert config_from_json(PipelineConfig, path).rank.cross_rank == 16


def _check_off_by_default(key: str, off: object, on: str, bad: tuple[str, ...]) -> None:
    """Pipeline config field `key` (dotted): `off` by default and in a saved config that
    lacks it (runs saved before the field), `on` accepted, every `bad` value refused with a
    ConfigError naming the field."""
    from recfunnel.config import load_config
    from recfunnel.run import PipelineConfig

    section, name = key.rsplit(".", 1)

    def value(config: PipelineConfig) -> object:
        for part in section.split("."):
            config = getattr(config, part)
        return getattr(config, name)

    assert value(PipelineConfig()) == off
    assert value(load_config(PipelineConfig, None, [f"--{key}={on}"])) == type(off)(on)
    for wrong in bad:
        with pytest.raises(ConfigError, match=name):
            load_config(PipelineConfig, None, [f"--{key}={wrong}"])
    saved = to_dict(PipelineConfig())
    node = saved
    for part in section.split("."):
        node = node[part]
    del node[name]
    assert value(from_dict(PipelineConfig, saved)) == off


@pytest.mark.parametrize(
    "key", ["recall.ease.decay_days", "recall.rp3beta.decay_days", "item_to_item.decay_days"]
)
def test_recency_decay_is_off_by_default_and_checked(key: str) -> None:
    """The liked rows' recency weights (exp(-age / decay_days)): 0 (1 each) unless set, a
    number of days >= 0; runs saved before the field read 0, the sum they were made with."""
    _check_off_by_default(key, 0.0, "30", ("-1", "nan", "inf"))


@pytest.mark.parametrize("key", ["recall.ease.neighbours", "item_to_item.neighbours"])
def test_ease_neighbours_are_off_by_default_and_checked(key: str) -> None:
    """EASE's rows cut to their largest weights (the funnel's channel and item-to-item
    score, one matrix): 0 (every weight) unless set, an integer >= 0; runs saved before the
    field read 0, the full matrix they were made with."""
    _check_off_by_default(key, 0, "200", ("-1",))
