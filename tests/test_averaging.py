"""The trial weight average: an exponential moving average over a trial, probed in place."""

from __future__ import annotations

import pytest
import torch

from lightning_autolrs.averaging import TrialAverage
from lightning_autolrs.probe import ValidationProbe

from .helpers import autolrs, make_module_class, trainer_kwargs


def test_average_follows_the_weights_and_the_probe_restores_them() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    avg = TrialAverage(net)
    start = [p.detach().clone() for p in net.parameters()]
    avg.start(tau_prime=40)  # alpha = 1/10
    assert avg.alpha == pytest.approx(0.1)
    expected = [s.clone() for s in start]
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (step + 1))
        avg.update()
        expected = [e + 0.1 * (p.detach() - e) for e, p in zip(expected, net.parameters())]
    current = [p.detach().clone() for p in net.parameters()]
    seen = avg.probe(lambda m: [p.detach().clone() for p in m.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(seen, expected))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), current))  # bitwise back
    avg.start(tau_prime=40)  # a new trial starts from the current weights
    assert all(torch.equal(a, b) for a, b in zip(avg.average, current))


def test_state_round_trip() -> None:
    net = torch.nn.Linear(3, 2)
    avg = TrialAverage(net)
    avg.start(tau_prime=8)
    with torch.no_grad():
        net.weight.mul_(2)
    avg.update()
    other = TrialAverage(net)
    other.load_state_dict(avg.state_dict())
    assert other.alpha == avg.alpha and all(torch.equal(a, b) for a, b in zip(other.average, avg.average))


def test_trials_are_judged_on_their_averaged_weights(lpl, tmp_path, monkeypatch) -> None:
    """With validation data, every trial probe evaluates the trial's running average (and judging on it changes the
    forecasts); with the default, no probe goes through the average."""
    calls: list[bool] = []
    real = TrialAverage.probe

    def spy(self, fn):
        calls.append(True)
        return real(self, fn)

    monkeypatch.setattr(TrialAverage, "probe", spy)
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    lpl.seed_everything(0)
    cb = autolrs(average_trials=True)
    lpl.Trainer(callbacks=[cb], **kw).fit(make_module_class(lpl)())
    trials = [t for h in cb.history for t in h["trials"] if not t["diverged"]]
    assert trials and cb.history[0]["signal"] == "val_loss"
    assert len(calls) >= len(trials) * 5  # every trial probe went through the average
    before = len(calls)
    lpl.seed_everything(0)
    plain = autolrs()  # the default: the last weights
    lpl.Trainer(callbacks=[plain], **kw).fit(make_module_class(lpl)())
    assert len(calls) == before  # average_trials=False probes the last weights
    assert [t["predicted_loss"] for t in plain.history[0]["trials"]] != [
        t["predicted_loss"] for t in cb.history[0]["trials"]
    ]  # judging on the average changes the forecasts


def test_probe_uses_the_validation_probe_in_eval_mode() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    probe = ValidationProbe(
        [(torch.ones(4, 2), torch.zeros(4, 2))], loss_fn=lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    )
    avg = TrialAverage(net)
    avg.start(tau_prime=4)
    first, second = avg.probe(probe), avg.probe(probe)
    assert first == second  # eval mode: dropout off, deterministic
    assert net.training
