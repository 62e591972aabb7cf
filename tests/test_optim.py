"""FlatAdam and its gradient clipping compute what torch.optim.Adam and clip_grad_norm_ compute."""

import copy

import pytest
import torch
from torch import nn

from ppo_lab.algo.optim import FlatAdam


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("max_norm", [0.05, 100.0])  # clipping active / inactive
def test_matches_torch_adam_with_clipping(max_norm):
    ours, ref = net(), net()
    opt = FlatAdam(ours.parameters(), lr=3e-3, eps=1e-5)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=3e-3, eps=1e-5)
    gen = torch.Generator().manual_seed(1)
    for step in range(25):
        x, y = torch.randn(32, 4, generator=gen), torch.randn(32, 3, generator=gen)
        opt.lr = ref_opt.param_groups[0]["lr"] = 3e-3 * (1 - step / 25)  # annealed like PPO's lr
        opt.zero_grad()
        (ours(x) - y).pow(2).mean().backward()
        norm = opt.clip_grad_norm_(max_norm)
        opt.step()
        ref_opt.zero_grad()
        (ref(x) - y).pow(2).mean().backward()
        ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        ref_opt.step()
        torch.testing.assert_close(norm, ref_norm)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameters_are_views_of_one_buffer_and_state_round_trips():
    model = net()
    before = copy.deepcopy(model.state_dict())
    opt = FlatAdam(model.parameters(), lr=1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # values kept when re-pointed
    assert all(p.data.data_ptr() >= opt.flat.data_ptr() for p in model.parameters())
    opt.flat.add_(1.0)
    assert torch.equal(model[0].bias, before["0.bias"] + 1.0)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    other = FlatAdam(net().parameters(), lr=5.0)
    other.load_state_dict(state)
    assert other.step_count == 1 and other.lr == 1e-3
    torch.testing.assert_close(other.exp_avg, opt.exp_avg)
    with pytest.raises(ValueError, match="parameters"):
        FlatAdam(nn.Linear(2, 2).parameters(), lr=1.0).load_state_dict(state)
