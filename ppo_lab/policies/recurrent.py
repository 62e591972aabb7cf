"""Recurrent cores (LSTM, GRU) between a policy's feature extractor and its heads.

Semantics are CleanRL's ``ppo_atari_lstm.py``: the hidden state is carried through the rollout,
multiplied by ``1 - episode_start`` before the step that reads an episode's first observation,
and in the loss each env's sequence is replayed from the state stored at the rollout's start
with the same resets.

The replay runs torch's own ``nn.LSTM`` / ``nn.GRU`` over stretches of time instead of once per
time step: the time axis is cut only at the steps where some env starts an episode, each stretch
is one rnn call over all the minibatch's envs, and between stretches the starting envs' state is
zeroed. That is exactly the step-by-step recurrence with resets (pinned in
``tests/test_recurrent.py``). Packing each episode segment (``pack_padded_sequence``) was the
other way; its backward costs several times more on CPU at these sizes.

The state of a core is one float32 tensor ``(B, state_size)``: ``[h, c]`` side by side for the
LSTM (``2 * hidden``), ``h`` for the GRU (``hidden``). One array per env keeps the rollout
buffer, checkpoints, ``predict`` and export free of per-core structure.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ppo_lab.config import ConfigError

#: ``network.core`` values.
CORES = ("none", "lstm", "gru")
#: Stretches of at most this many steps are replayed cell by cell (``RecurrentCore.sequence``).
SHORT_STRETCH = 2


class RecurrentCore(nn.Module):
    """One LSTM or GRU layer with episode-start resets.

    Weights are orthogonal with gain 1 and biases zero (CleanRL ``ppo_atari_lstm.py``).

    Args:
        kind: ``lstm`` or ``gru``.
        in_dim: width of the features it reads.
        hidden: width of its output (and of ``h``).

    Raises:
        ConfigError: an unknown ``kind``.
    """

    def __init__(self, kind: str, in_dim: int, hidden: int) -> None:
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ConfigError(f"network.core={kind!r} is not a recurrent core; allowed: {', '.join(CORES)}")
        self.kind, self.hidden = kind, int(hidden)
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(in_dim, self.hidden)
        for name, param in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            else:
                nn.init.orthogonal_(param, 1.0)
        #: Width of this core's state: ``2 * hidden`` (LSTM: h and c) or ``hidden`` (GRU).
        self.state_size = 2 * self.hidden if kind == "lstm" else self.hidden

    def _to_rnn(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``(B, state_size)`` -> the rnn's ``h0`` ``(1, B, H)`` (and ``c0``)."""
        if self.kind == "lstm":
            h, c = state.split(self.hidden, dim=-1)
            return h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()
        return state.unsqueeze(0).contiguous()

    def _from_rnn(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if self.kind == "lstm":
            return torch.cat([state[0][0], state[1][0]], dim=-1)
        return state[0]

    def step(self, x: Tensor, state: Tensor, episode_start: Tensor) -> tuple[Tensor, Tensor]:
        """One time step for a batch.

        Args:
            x: ``(B, in_dim)`` float features.
            state: ``(B, state_size)`` float32, the state after the previous step.
            episode_start: ``(B,)`` bool, True where ``x`` is an episode's first observation
                (the state is zeroed there first).

        Returns:
            ``(B, hidden)`` output and the ``(B, state_size)`` new state.
        """
        state = state * (~episode_start).unsqueeze(-1).to(state.dtype)
        return self._cell(x, state)

    def _cell(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the rnn's own layer through torch's fused cell (``torch.lstm_cell`` /
        ``torch.gru_cell``, the kernels of ``nn.LSTMCell`` / ``nn.GRUCell``): a one-step call of
        ``nn.LSTM`` costs several times more on CPU (a oneDNN primitive per call)."""
        rnn = self.rnn
        weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        if self.kind == "lstm":
            h, c = state.split(self.hidden, dim=-1)
            h, c = torch.lstm_cell(x, (h, c), *weights)
            return h, torch.cat([h, c], dim=-1)
        h = torch.gru_cell(x, state, *weights)
        return h, h

    def sequence(self, x: Tensor, state: Tensor, episode_start: Tensor) -> Tensor:
        """Replay whole sequences (the loss), equal to calling :meth:`step` for t = 0 .. T-1.

        The time axis is cut where any env starts an episode; each piece is one call of the
        rnn over all envs, and between pieces the state of the envs that start is zeroed.

        Args:
            x: ``(T * B, in_dim)`` features, time-major (row ``t * B + b`` is env b at step t).
            state: ``(B, state_size)`` the state before step 0 (the rollout's stored state).
            episode_start: ``(T, B)`` bool.

        Returns:
            ``(T * B, hidden)`` outputs, time-major.
        """
        T, B = episode_start.shape
        x = x.view(T, B, -1)
        cuts = [0, *(torch.nonzero(episode_start[1:].any(dim=1)).squeeze(-1) + 1).tolist(), T]
        outs = []
        for begin, end in zip(cuts[:-1], cuts[1:]):
            state = state * (~episode_start[begin]).unsqueeze(-1).to(state.dtype)
            if end - begin <= SHORT_STRETCH:  # a call of the whole rnn costs more than a few cell steps
                for t in range(begin, end):
                    out, state = self._cell(x[t], state)
                    outs.append(out.unsqueeze(0))
            else:
                out, new = self.rnn(x[begin:end], self._to_rnn(state))
                state = self._from_rnn(new)
                outs.append(out)
        return torch.cat(outs).reshape(T * B, -1)
