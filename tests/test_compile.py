"""torch.compile parity: the compiled network gives the same losses and gradients on the same batch."""

import copy

import gymnasium as gym
import numpy as np
import torch

from conftest import compose_cfg
from ppo_lab.config import ActionType
from ppo_lab.algo.losses import ppo_losses, total_loss
from ppo_lab.policies import ActorCritic
from ppo_lab.commands.train import train


def batch_losses(net, obs, actions, old_logprob, adv, old_value, returns):
    logp, ent, value = net.evaluate_actions(obs, actions)
    terms = ppo_losses(logp, old_logprob, adv, value, old_value, returns, ent, 0.2)
    return total_loss(terms, 0.01, 0.5), terms


def test_compiled_and_eager_losses_and_gradients_match():
    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    eager = ActorCritic(obs_space, gym.spaces.Box(-1, 1, (2,), np.float32), ActionType.continuous)
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=True)
    obs, actions = torch.randn(64, 4), torch.randn(64, 2)
    data = (torch.randn(64), torch.randn(64), torch.randn(64), torch.randn(64))
    loss_e, terms_e = batch_losses(eager, obs, actions, *data)
    loss_c, terms_c = batch_losses(compiled, obs, actions, *data)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for key in terms_e:
        torch.testing.assert_close(terms_c[key], terms_e[key], rtol=1e-5, atol=1e-6)
    loss_e.backward()
    loss_c.backward()
    for (name, pe), pc in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_with_compile_flag_runs(tmp_path):
    result = train(compose_cfg(["debug=fast", "compile=true", "total_timesteps=512"]), tmp_path)
    assert np.isfinite(result["eval/episodic_return"])
