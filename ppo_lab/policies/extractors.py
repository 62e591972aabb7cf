"""The combined feature extractor of ``Dict`` observations (SB3's ``CombinedExtractor``).

One encoder per entry, chosen from the entry's space (``policies/encoders.py``), outputs
concatenated in sorted key order (the order gymnasium's ``Dict`` keeps its keys in):

* image ``Box`` (3-D uint8, channels first or last): the Nature CNN with a 256-wide output when
  both sides are at least :data:`NATURE_MIN_SIDE` pixels; else the minigrid docs' small CNN
  (:class:`SmallCNN`, from :data:`SMALL_MIN_SIDE` pixels: MiniGrid's ``(7, 7, 3)`` view, where the
  Nature CNN's 8x8 stride-4 first layer does not fit); smaller images are flattened;
* any other ``Box``: flattened, float32 values;
* ``Discrete`` / ``MultiDiscrete``: one-hot; ``MultiBinary``: its bits.

The entry ``action_mask`` is not encoded: it is the source of the action mask, not an input.
An entry that has no encoder (MiniGrid's ``mission`` text, a nested ``Dict``) is refused with a
:class:`~ppo_lab.config.ConfigError` naming the key and the way out (``env.obs_keys``, or a
wrapper in ``env.wrappers``), when the network is built, before any training.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ppo_lab.config import ConfigError
from ppo_lab.policies.encoders import image_chw, is_channels_last, is_image_space, vector_encoder
from ppo_lab.policies.layers import MLP, NatureCNN, layer_init

#: The Dict entry that holds the action mask; the extractor leaves it out.
ACTION_MASK_KEY = "action_mask"
#: Smallest image side the Nature CNN reads (8x8 stride 4, 4x4 stride 2, 3x3 stride 1).
NATURE_MIN_SIDE = 36
#: Output width of the CNN of an image entry (SB3's CombinedExtractor: cnn_output_dim=256).
NATURE_FEATURES = 256
#: Smallest image side :class:`SmallCNN` reads (three 2x2 convolutions); smaller images are
#: flattened like vector entries.
SMALL_MIN_SIDE = 4


class SmallCNN(nn.Module):
    """A CNN for small grid images: uint8 ``(B, C, H, W)`` (or ``(B, H, W, C)`` with
    ``channels_last``) -> float32 ``(B, 64 * (H - 3) * (W - 3))`` (``(7, 7, 3)`` MiniGrid views:
    1024 features, which the MLP trunk reads directly).

    Three 2x2 convolutions of 16, 32 and 64 channels, stride 1, ReLU: the minigrid docs'
    MinigridFeaturesExtractor ("Training MiniGrid with SB3"), without its linear layer (the MLP
    trunk is one). No pooling: rl-starter-files' 2x2 max-pool after the first convolution made a
    trained DoorKey agent mistake a key two cells ahead for one in front (its deterministic policy
    then repeats ``pickup``). Values enter unscaled, as float32: small images are grid encodings
    in practice (MiniGrid: object, colour and state indices 0-10, which 1/255 would shrink to
    ~0.04), as rl-starter-files reads them. Needs both sides >= :data:`SMALL_MIN_SIDE`.
    """

    def __init__(self, in_channels: int, screen: tuple[int, int], channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.convs = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 16, 2)), nn.ReLU(),
            layer_init(nn.Conv2d(16, 32, 2)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 2)), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            #: Width of the output.
            self.features_dim = int(self.convs(torch.zeros(1, in_channels, *screen)).shape[1])

    def forward(self, obs: Tensor) -> Tensor:
        if self.channels_last:
            obs = obs.permute(0, 3, 1, 2)
        return self.convs(obs.float())


class _Flatten(nn.Module):
    """A non-image ``Box`` entry ``(B, *shape)`` -> float32 ``(B, prod(shape))``."""

    def forward(self, obs: Tensor) -> Tensor:
        return obs.reshape(len(obs), -1).float()


def entry_encoder(key: str, space: gym.Space) -> tuple[nn.Module, int]:
    """The encoder of one Dict entry and the width of its output (module docstring).

    Raises:
        ConfigError: the entry's space has no encoder, naming ``key`` and the way out.
    """
    if is_image_space(space):
        c, h, w = image_chw(space)
        last = is_channels_last(space)
        if min(h, w) >= NATURE_MIN_SIDE:
            return NatureCNN(c, (h, w), NATURE_FEATURES, channels_last=last), NATURE_FEATURES
        if min(h, w) >= SMALL_MIN_SIDE:
            cnn = SmallCNN(c, (h, w), channels_last=last)
            return cnn, cnn.features_dim
        return _Flatten(), int(np.prod(space.shape))  # a 3x3 view: its values, as a vector
    try:
        encoder, width = vector_encoder(space)
    except ConfigError:
        raise ConfigError(f"observation entry {key!r} ({space}) cannot be encoded") from None
    return (encoder if encoder is not None else _Flatten()), width


class CombinedExtractor(nn.Module):
    """``Dict`` observations ``{key: (B, *entry_shape)}`` -> float32 features ``(B, features_dim)``:
    each entry's encoding (module docstring), concatenated in sorted key order; ``action_mask``
    is left out.

    Args:
        observation_space: the single env's ``Dict`` space.

    Attributes:
        keys: the encoded entries, sorted.
        features_dim: width of the output.

    Raises:
        ConfigError: an entry cannot be encoded (naming it, and ``env.obs_keys=[...]`` with the
            entries that can, or a wrapper through ``env.wrappers``), or no entry is left.
    """

    def __init__(self, observation_space: gym.spaces.Dict) -> None:
        super().__init__()
        keys = sorted(k for k in observation_space.spaces if k != ACTION_MASK_KEY)  # gymnasium's order
        encoders, widths, refused = {}, [], []
        for key in keys:
            try:
                encoders[key], width = entry_encoder(key, observation_space[key])
                widths.append(width)
            except ConfigError as exc:
                refused.append((key, str(exc)))
        if refused:
            key, why = refused[0]
            usable = [k for k in keys if k in encoders]
            raise ConfigError(
                f"{why}: allowed entries are Box (vectors or uint8 images), Discrete, MultiDiscrete, "
                f"MultiBinary. Leave it out with 'env.obs_keys=[{','.join(usable)}]', or turn it into one "
                f"of those with a wrapper through env.wrappers (e.g. env.wrappers=[<module>.<YourWrapper>])"
            )
        if not encoders:
            raise ConfigError(f"observation space {observation_space} has no entry to encode (only "
                              f"{ACTION_MASK_KEY!r}); allowed: a Dict with at least one other entry")
        self.keys = keys
        self.encoders = nn.ModuleDict(encoders)
        self.features_dim = int(sum(widths))

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.encoders[key](obs[key]) for key in self.keys], dim=1)


class ExtractorMLP(nn.Module):
    """A trunk over Dict observations: the :class:`CombinedExtractor`, then the MLP on its
    concatenated features. ``{key: (B, *entry_shape)}`` -> ``(B, hidden_sizes[-1])``."""

    def __init__(self, observation_space: gym.spaces.Dict, hidden_sizes: list[int], activation: str) -> None:
        super().__init__()
        self.extractor = CombinedExtractor(observation_space)
        self.mlp = MLP(self.extractor.features_dim, hidden_sizes, activation)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        return self.mlp(self.extractor(obs))

