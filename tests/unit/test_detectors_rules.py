"""Rule configuration: defaults with reasons, validation, layering, applicability, pairing."""

from __future__ import annotations

import json

import pytest

from losswatch.server.detectors import (
    REASONS,
    RULES,
    Divergence,
    RuleConfig,
    defaults,
    make_detector,
    resolve_config,
)


def test_every_default_has_a_documented_reason():
    for rule in RULES:
        params = defaults(rule)
        undocumented = {p for p in params if p not in ("finite_only",)} - set(REASONS[rule])
        assert not undocumented, (rule, undocumented)


def test_make_detector_registry():
    det = make_detector("divergence", {"rtol": 0.5, "patience": 200})
    assert isinstance(det, Divergence) and det.rtol == 0.5 and det.patience == 200
    assert make_detector("divergence", {"rtol": 0.5, "patience": 200}) is det  # cached


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"divergnce": {}}, "unknown rule 'divergnce'"),
        ({"divergence": {"rtl": 1}}, "divergence: unknown parameter 'rtl'"),
        ({"divergence": {"patience": "long"}}, "divergence.patience must be an integer"),
        ({"divergence": {"patience": -1}}, "divergence.patience must be >= 0"),
        ({"plateau": {"mode": "up"}}, "plateau.mode must be one of 'min', 'max'"),
        ({"spike": 3}, "spike must be true, false or an object"),
        ({"spike": {"kinds": ["losses"]}}, "spike.kinds: unknown kind 'losses'"),
        ({"spike": {"enabled": "no"}}, "spike.enabled must be true or false"),
        ({"silenced": "plateau"}, "silenced must be a list of rule names"),
        ({"silenced": ["platea"]}, "cannot silence unknown rule 'platea'"),
        ({"divergence": {"pair": "x"}}, "divergence.pair must be a series key"),
        ([1, 2], "alert rules must be an object"),
    ],
)
def test_invalid_configuration_is_a_clear_value_error(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        RuleConfig.from_dict(data)


def test_defaults_apply_by_kind_and_key():
    cfg = RuleConfig.default()
    assert cfg.rules_for("train/loss", "loss") == ("non_finite", "spike", "divergence", "plateau")
    assert cfg.rules_for("train/loss/box", "loss_component") == ("non_finite",)
    assert cfg.rules_for("grad_norm", "grad_norm") == ("non_finite",)
    assert cfg.rules_for("val/loss", "loss") == ("non_finite", "overfitting")
    assert cfg.rules_for("val/box_loss", "loss_component") == ("non_finite", "overfitting")
    assert cfg.rules_for("metrics/mAP50-95(B)", "metric") == ("non_finite", "misalignment")
    assert cfg.rules_for("lr", "lr") == ()


def test_project_then_run_then_silenced():
    project = {"divergence": {"rtol": 0.5, "patience": 200}, "spike": {"kinds": ["loss", "loss_component"]}}
    run = {"divergence": {"patience": 100}, "plateau": False, "silenced": ["misalignment"]}
    cfg = resolve_config(project, run, silenced=["overfitting"])
    assert cfg.detector("divergence").rtol == 0.5 and cfg.detector("divergence").patience == 100
    assert "spike" in cfg.rules_for("train/loss/box", "loss_component")
    assert "plateau" not in cfg.rules_for("train/loss", "loss")
    assert cfg.rules_for("val/loss", "loss") == ("non_finite",)
    assert cfg.rules_for("val/acc", "metric") == ("non_finite",)
    again = RuleConfig.from_dict({"plateau": True}, base=cfg)
    assert "plateau" in again.rules_for("train/loss", "loss")
    assert json.loads(json.dumps(cfg.to_dict(), allow_nan=False))["divergence"]["patience"] == 100


def test_keys_and_exclude_patterns():
    cfg = RuleConfig.from_dict({"divergence": {"keys": ["train/*"], "exclude": ["train/aux*"]}})
    assert "divergence" in cfg.rules_for("train/loss", "loss")
    assert "divergence" not in cfg.rules_for("train/aux_loss", "loss")
    assert "divergence" not in cfg.rules_for("loss", "loss")


def test_pairs():
    cfg = RuleConfig.default()
    kinds = {"train/loss": "loss", "val/loss": "loss", "val/acc": "metric", "loss": "loss", "val_loss": "loss"}
    assert cfg.pair("overfitting", "val/loss", kinds) == "train/loss"
    assert cfg.pair("overfitting", "val_loss", kinds) == "loss"
    assert cfg.pair("misalignment", "val/acc", kinds) == "train/loss"
    yolo = {"train/box_loss": "loss_component", "val/box_loss": "loss_component", "metrics/mAP50(B)": "metric"}
    assert cfg.pair("overfitting", "val/box_loss", yolo) == "train/box_loss"
    assert cfg.pair("misalignment", "metrics/mAP50(B)", yolo) is None
    custom = cfg.merge({"misalignment": {"pair": "val/loss"}})
    assert custom.pair("misalignment", "val/acc", kinds) == "val/loss"


def test_a_retired_parameter_in_a_saved_configuration_is_accepted_and_ignored() -> None:
    """``single_floor`` left the spike rule with its log-space scale: configurations saved with it must
    still load (a refused stored configuration would stop detection), and it changes nothing."""
    from losswatch.server.detectors.rules import make_detector

    assert make_detector("spike", {"single_floor": 0.5}) == make_detector("spike", {})
    with pytest.raises(ValueError, match="unknown parameter 'single_flor'"):
        make_detector("spike", {"single_flor": 0.5})
