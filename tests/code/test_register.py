"""The champion gate's rules, as a pure function (the e2e test checks them against MLflow)."""

from pipelines.register import decide


def test_first_model_passing_the_gate_is_promoted():
    assert decide(0.991, 0.99, None)[0] is True


def test_below_the_gate_is_never_promoted():
    promote, reason = decide(0.98, 0.99, None)
    assert promote is False and "below register.min_accuracy" in reason


def test_worse_than_champion_is_kept_out():
    promote, reason = decide(0.992, 0.99, ("3", 0.995))
    assert promote is False and "worse than champion v3" in reason


def test_equal_or_better_than_champion_is_promoted():
    assert decide(0.995, 0.99, ("3", 0.995))[0] is True
    assert decide(0.996, 0.99, ("3", 0.995))[0] is True
