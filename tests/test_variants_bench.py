"""The options benchmark (bench/variants_loop.py, issue 18) measures the right thing: each
implementation it times computes the loop's numbers with the loop's masks, and a baseline
that computed something else would show in its row's difference, not hide behind a time.
Tiny shapes through the interpreter: the timings here mean nothing."""
import pytest
import torch

from bench import variants_loop


@pytest.mark.parametrize("option", ["resets", "weight_drop", "zoneout"])
def test_every_timed_implementation_matches_the_loop(option):
    got = variants_loop.measure(option, "lstm", torch.float32, 2, 4, 3, "cpu", repeats=1)
    impls = {r["impl"] for r in got}
    assert {"loop", "stepwise", "persistent"} <= impls
    assert {"resets": {"cudnn-steps"}, "weight_drop": {"cudnn-masked"}}.get(option, set()) <= impls
    assert {(r["impl"], r["pass_"]) for r in got} == {(i, p) for i in impls
                                                     for p in ("fwd", "fwdbwd")}
    assert all(r["diff"] < 1e-5 and r["ms"] > 0 for r in got), got


def test_a_baseline_that_ignores_the_resets_shows_in_its_difference(monkeypatch):
    monkeypatch.setattr(variants_loop, "resets_by_steps",
                        lambda twin, x, resets: twin(x)[0])  # forgets every episode start
    torch.manual_seed(3)
    got = variants_loop.measure("resets", "lstm", torch.float32, 4, 4, 12, "cpu", repeats=1)
    wrong = [r for r in got if r["impl"] == "cudnn-steps"]
    assert wrong and all(r["diff"] > 1e-3 for r in wrong)
