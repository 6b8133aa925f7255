import math

import pytest
import torch
from torch import nn

from trainer.optim import (
    LARS,
    lars_param_groups,
    scaled_learning_rate,
    set_learning_rate,
    warmup_cosine,
)


def reference_lars_step(params, grads, buffers, lr, momentum, weight_decay, eta, excluded):
    """The official TF LARSOptimizer (classic momentum), one parameter at a time, in place on the lists."""
    for i, (w, g) in enumerate(zip(params, grads, strict=True)):
        if excluded[i]:
            trust = 1.0
        else:
            g = g + weight_decay[i] * w
            w_norm, g_norm = w.norm().item(), g.norm().item()
            trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        buffers[i] = momentum * buffers[i] + lr * trust * g
        params[i] = w - buffers[i]


def test_lars_matches_reference_with_changing_lr():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    nn.init.zeros_(model[2].bias)  # zero-initialised: must still move (trust 1, not 0)
    groups = lars_param_groups(model, weight_decay=1e-2)
    optimizer = LARS(groups, lr=0.0, momentum=0.9, eta=1e-3)
    ordered = [p for g in groups for p in g["params"]]
    excluded = [g.get("lars_exclude", False) for g in groups for _ in g["params"]]
    weight_decay = [g["weight_decay"] for g in groups for _ in g["params"]]
    ref_params = [p.detach().clone() for p in ordered]
    ref_buffers = [torch.zeros_like(p) for p in ordered]
    x = torch.randn(16, 4)
    for step, lr in enumerate([0.5, 1.0, 2.0, 0.25, 0.0, 1.5]):
        grads = [torch.randn_like(p) * (step + 1) for p in ordered]
        for p, g in zip(ordered, grads, strict=True):
            p.grad = g.clone()
        set_learning_rate(optimizer, lr)
        optimizer.step()
        reference_lars_step(ref_params, grads, ref_buffers, lr, 0.9, weight_decay, 1e-3, excluded)
        for p, ref in zip(ordered, ref_params, strict=True):
            torch.testing.assert_close(p.detach(), ref, rtol=1e-6, atol=1e-7)
    assert model(x).shape == (16, 2)
    assert model[2].bias.abs().sum() > 0


def test_lars_trust_is_one_when_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(3, 3))
    optimizer = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(3, 3)
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1))


def test_lars_state_dict_round_trip_keeps_momentum():
    w = nn.Parameter(torch.randn(4, 4))
    optimizer = LARS([w], lr=0.1)
    w.grad = torch.randn(4, 4)
    optimizer.step()
    state = optimizer.state_dict()
    again = LARS([w], lr=0.1)
    again.load_state_dict(state)
    torch.testing.assert_close(
        again.state[w]["momentum_buffer"], optimizer.state[w]["momentum_buffer"]
    )


def test_param_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    adapted, excluded = lars_param_groups(model, 1e-6)
    assert {id(p) for p in adapted["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert adapted["weight_decay"] == 1e-6
    assert excluded["lars_exclude"] and excluded["weight_decay"] == 0.0
    assert len(excluded["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_paper_learning_rates():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(0.3, 256, "linear") == pytest.approx(0.3)
    with pytest.raises(ValueError):
        scaled_learning_rate(0.3, 256, "cubic")  # type: ignore[arg-type]


def test_warmup_then_cosine():
    peak, warmup, total = 4.8, 10, 110
    assert warmup_cosine(0, peak, warmup, total) == 0.0
    assert warmup_cosine(5, peak, warmup, total) == pytest.approx(2.4)
    assert warmup_cosine(10, peak, warmup, total) == pytest.approx(peak)
    assert warmup_cosine(60, peak, warmup, total) == pytest.approx(peak / 2)
    assert warmup_cosine(110, peak, warmup, total) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(35, peak, warmup, total) == pytest.approx(
        peak * 0.5 * (1 + math.cos(math.pi * 25 / 100))
    )
    rates = [warmup_cosine(s, peak, warmup, total) for s in range(total)]
    assert rates[:warmup] == sorted(rates[:warmup])
    assert rates[warmup:] == sorted(rates[warmup:], reverse=True)
