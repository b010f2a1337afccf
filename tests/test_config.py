from dataclasses import dataclass, field

import pytest

from semcal.core.config import apply_overrides, parse_value, run_script, settings_help
from semcal.core.errors import UserError


@dataclass
class ExampleConfig:
    name: str = "demo"  # a name
    steps: int = 3  # how many steps
    rate: float = 0.5  # a rate
    verbose: bool = False  # talk more
    label_map: str | None = None  # optional map
    splits: list[str] = field(default_factory=lambda: ["mild", "severe"])  # which splits
    targets: dict[str, float] = field(default_factory=lambda: {"mild": 0.25})  # targets per split


def test_overrides_are_typed_by_the_declared_type():
    config = apply_overrides(
        ExampleConfig(),
        ["--steps=7", "--rate=1e-3", "--verbose=yes", "--label_map=none", "--splits=a,b,c", "--targets=x=0.1,y=2"],
    )
    assert config.steps == 7 and isinstance(config.steps, int)
    assert config.rate == pytest.approx(1e-3)
    assert config.verbose is True
    assert config.label_map is None
    assert config.splits == ["a", "b", "c"]
    assert config.targets == {"x": 0.1, "y": 2.0}
    assert apply_overrides(ExampleConfig(), ["--label_map=cifar"]).label_map == "cifar"
    assert apply_overrides(ExampleConfig(), ["--name=a=b"]).name == "a=b"  # only the first '=' splits


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="unknown setting 'stpes'.*Valid names: name, steps, rate"):
        apply_overrides(ExampleConfig(), ["--stpes=3"])


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--steps=three", "expected an integer"),
        ("--rate=fast", "expected a number"),
        ("--verbose=maybe", "expected a boolean"),
        ("--targets=mild", "key=value"),
        ("steps=3", "--name=value"),
    ],
)
def test_bad_values_name_the_expected_form(arg, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(ExampleConfig(), [arg])


def test_parse_value_never_evaluates():
    assert parse_value("__import__('os').getcwd()", str) == "__import__('os').getcwd()"
    with pytest.raises(ValueError):
        parse_value("__import__('os')", int)


def test_help_lists_every_setting_with_its_comment():
    text = settings_help(ExampleConfig)
    for name in ("name", "steps", "rate", "verbose", "label_map", "splits", "targets"):
        assert f"--{name}=" in text
    assert "how many steps" in text and "targets per split" in text


def test_run_script_uses_script_values_then_overrides():
    calls = []
    run_script(calls.append, ExampleConfig, {"steps": 11, "rate": 0.1, "unrelated": 1}, argv=["--rate=0.2"])
    assert calls[0].steps == 11 and calls[0].rate == 0.2
    with pytest.raises(SystemExit, match="unknown setting"):
        run_script(calls.append, ExampleConfig, {}, argv=["--nope=1"])
