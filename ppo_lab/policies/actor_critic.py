"""The project's actor-critic: shared trunk or separate actor and critic; MLP or Nature CNN;
on Dict observations, the combined extractor then the MLP (``policies/extractors.py``).

Heads follow the 37 details, detail 2: gain 0.01 on the policy head, 1 on the value head.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo_lab.config import ActionType, ConfigError
from ppo_lab.policies.encoders import image_chw, is_channels_last, is_image_space, vector_encoder
from ppo_lab.policies.extractors import CombinedExtractor, ExtractorMLP
from ppo_lab.policies.inference import FusedMLPPolicy, InferencePolicy, RecurrentNetworkPolicy
from ppo_lab.policies.layers import MLP, NatureCNN, layer_init
from ppo_lab.policies.protocol import ActorCriticBase
from ppo_lab.policies.recurrent import CORES, RecurrentCore


class ActorCritic(ActorCriticBase):
    """Policy and value function for one observation and action space.

    Args:
        observation_space: of the single (not batched) env. ``kind="mlp"``: a vector ``Box``
            (flattened), ``Discrete`` / ``MultiDiscrete`` (one-hot) or ``MultiBinary``;
            ``kind="cnn"``: uint8 frames, ``(C, H, W)`` or ``(H, W, C)`` (``policies/encoders.py``).
            A ``Dict`` (``kind="mlp"`` only): each trunk is the combined extractor (one encoder
            per entry, a CNN for image entries; ``policies/extractors.py``) then the MLP, so
            separate actor and critic have separate extractors.
        action_space: ``Discrete`` (Categorical policy), ``MultiDiscrete`` (one Categorical per
            component) or ``Box`` (diagonal Gaussian with state-independent log std; 37 details,
            continuous detail 2).
        action_type: the configured action type; must match ``action_space``.
        kind: ``mlp`` or ``cnn``.
        shared: one trunk feeding both heads (true), or separate actor and critic (false).
        hidden_sizes: MLP widths, or ``[width]`` of the CNN's last layer.
        activation: ``tanh`` or ``relu`` (MLP only).
        log_std_init: initial log std (continuous only).
        core: ``none`` (feed-forward), ``lstm`` or ``gru``: a recurrent core between the trunk and
            the heads (``policies/recurrent.py``; CleanRL ``ppo_atari_lstm.py``), one per trunk
            (shared: one core feeds both heads; separate: the actor and the critic each have one).
        core_size: hidden width of the recurrent core.

    Raises:
        ConfigError: the action type does not match the env's action space, the network kind
            does not fit the observation (e.g. a CNN on vector observations), or an unknown core.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        action_type: ActionType = ActionType.discrete,
        kind: str = "mlp",
        shared: bool = False,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        core: str = "none",
        core_size: int = 128,
    ) -> None:
        super().__init__(observation_space, action_space, action_type, log_std_init)
        check_network_fits(observation_space, kind)
        if core not in CORES:
            raise ConfigError(f"network.core={core!r} is not known; allowed: {', '.join(CORES)}")
        self.shared = shared

        # One-hot / bit encoders have no parameters, so the state_dict keys stay the trunks' and heads'.
        is_dict = isinstance(observation_space, gym.spaces.Dict)
        self.encoder, in_dim = (None, 0) if kind == "cnn" or is_dict else vector_encoder(observation_space)

        def trunk() -> tuple[nn.Module, int]:
            if is_dict:
                return ExtractorMLP(observation_space, list(hidden_sizes), activation), hidden_sizes[-1]
            if kind == "cnn":
                c, h, w = image_chw(observation_space)
                return (NatureCNN(c, (h, w), hidden_sizes[-1], channels_last=is_channels_last(observation_space)),
                        hidden_sizes[-1])
            return MLP(in_dim, hidden_sizes, activation), hidden_sizes[-1]

        self.actor_trunk, feat = trunk()
        self.critic_trunk = self.actor_trunk if shared else trunk()[0]
        self.actor_core: RecurrentCore | None = None
        self.critic_core: RecurrentCore | None = None
        if core != "none":
            self.actor_core = RecurrentCore(core, feat, core_size)
            self.critic_core = self.actor_core if shared else RecurrentCore(core, feat, core_size)
            self.recurrent_state_size = self.actor_core.state_size * (1 if shared else 2)
            feat = core_size
        self.policy_head = layer_init(nn.Linear(feat, self.action_dim), gain=0.01)
        self.value_head = layer_init(nn.Linear(feat, 1), gain=1.0)

    def _trunks(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if self.encoder is not None:
            obs = self.encoder(obs)
        actor_features = self.actor_trunk(obs)
        return actor_features, actor_features if self.shared else self.critic_trunk(obs)

    def _heads(self, actor_features: Tensor, critic_features: Tensor) -> tuple[Tensor, Tensor]:
        head, vhead = self.policy_head, self.value_head
        return (F.linear(actor_features, head.weight, head.bias),
                F.linear(critic_features, vhead.weight, vhead.bias).squeeze(-1))

    def forward(self, obs: Tensor, state: Tensor | None = None, episode_start: Tensor | None = None) -> tuple:
        """One fused pass: ``obs`` ``(B, *obs_shape)`` (Dict observations: ``{key: (B, *entry_shape)}``)
        -> (logits ``(B, n)`` or mean ``(B, d)``, value ``(B,)``). Recurrent (``core`` set): also takes ``state`` ``(B, recurrent_state_size)``
        and ``episode_start`` ``(B,)`` bool, and returns the new state third."""
        actor_features, critic_features = self._trunks(obs)
        if self.actor_core is None:
            return self._heads(actor_features, critic_features)
        if state is None or episode_start is None:
            raise ValueError("a recurrent network's forward needs state and episode_start")
        if self.shared:
            actor_features, new_state = self.actor_core.step(actor_features, state, episode_start)
            return (*self._heads(actor_features, actor_features), new_state)
        actor_state, critic_state = state.chunk(2, dim=-1)
        actor_features, actor_state = self.actor_core.step(actor_features, actor_state, episode_start)
        critic_features, critic_state = self.critic_core.step(critic_features, critic_state, episode_start)
        return (*self._heads(actor_features, critic_features), torch.cat([actor_state, critic_state], dim=-1))

    def forward_sequence(self, obs: Tensor, state: Tensor, episode_start: Tensor) -> tuple[Tensor, Tensor]:
        """Replay whole sequences (the loss of a recurrent policy; ``RecurrentCore.sequence``).

        Args:
            obs: ``(T * B, *obs_shape)`` time-major (row ``t * B + b``: env b at step t).
            state: ``(B, recurrent_state_size)`` the state before step 0.
            episode_start: ``(T, B)`` bool.

        Returns:
            ``(T * B, n)`` logits or means and ``(T * B,)`` values, time-major.
        """
        actor_features, critic_features = self._trunks(obs)
        if self.shared:
            actor_features = self.actor_core.sequence(actor_features, state, episode_start)
            return self._heads(actor_features, actor_features)
        actor_state, critic_state = state.chunk(2, dim=-1)
        return self._heads(self.actor_core.sequence(actor_features, actor_state, episode_start),
                           self.critic_core.sequence(critic_features, critic_state, episode_start))

    def value(self, obs: Tensor) -> Tensor:
        """``(B,)`` state values V(s) (feed-forward networks)."""
        if self.encoder is not None:
            obs = self.encoder(obs)
        vhead = self.value_head
        return F.linear(self.critic_trunk(obs), vhead.weight, vhead.bias).squeeze(-1)

    def inference_policy(self) -> InferencePolicy:
        """This network as a numpy-in, numpy-out policy for acting with frozen weights (rollouts
        and evaluation): a :class:`FusedMLPPolicy` snapshot for MLPs (derived from these very
        layers: one source of truth), the torch forward (:class:`NetworkPolicy`) for CNNs and
        for one-hot or Dict observations.

        Take a new one after every parameter update: the MLP snapshot does not follow the weights.
        """
        if self.actor_core is not None:
            return RecurrentNetworkPolicy(self)
        if isinstance(self.actor_trunk, MLP) and self.encoder is None:  # Box vectors only
            return FusedMLPPolicy(self)
        return super().inference_policy()


def check_network_fits(observation_space: gym.Space, kind: str) -> None:
    """Raise :class:`ConfigError` when ``kind`` cannot read ``observation_space`` (the spaces
    each kind reads: ``policies/encoders.py``; Dict observations: ``policies/extractors.py``).

    ``network.kind=cnn`` on a Dict is refused: the Nature CNN reads one image, and the MLP kinds
    already run a CNN on each image entry through the combined extractor.
    """
    if isinstance(observation_space, gym.spaces.Dict):
        CombinedExtractor(observation_space)  # refuses an entry it cannot encode, naming it
        if kind == "cnn":
            images = [k for k, sub in observation_space.spaces.items() if is_image_space(sub)]
            raise ConfigError(
                f"network.kind=cnn reads one image observation, but the env gives a Dict {observation_space}; "
                "allowed: network=mlp_shared or network=mlp_separate, whose combined extractor runs a CNN on "
                f"each image entry ({', '.join(images) or 'none here'}) and encodes the others"
            )
        return
    if not isinstance(observation_space, gym.spaces.Box):
        vector_encoder(observation_space)  # refuses Dict / Tuple with the way out
        if kind == "cnn":
            raise ConfigError(
                f"network.kind=cnn needs image observations, but the env gives {observation_space}; "
                "allowed: network=mlp_shared or network=mlp_separate"
            )
        return
    is_image = is_image_space(observation_space)
    if kind == "cnn" and not is_image:
        raise ConfigError(
            f"network.kind=cnn needs image observations (C, H, W) or (H, W, C) uint8, but the env gives "
            f"{observation_space.shape} {observation_space.dtype}; allowed: network=mlp_shared or "
            "network=mlp_separate"
        )
    if kind == "mlp" and is_image:
        raise ConfigError(
            f"network.kind=mlp on image observations {observation_space.shape}; allowed: "
            "network=cnn_shared or network=cnn_separate"
        )
