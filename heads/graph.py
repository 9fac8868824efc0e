"""G-TAD's graph pieces: the dynamic k-NN graph over snippets and the GCNeXt block (Xu et al., CVPR 2020).

Snippets are graph nodes. Temporal edges link neighbours in time (a grouped 1-D convolution); semantic edges link
each snippet to its k nearest snippets in feature space, recomputed from the current features at every block
(so the graph changes during training and with the input).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, L, k) of each snippet's k nearest snippets in feature space (itself included), nearest first.

    ``x`` is (B, C, L); distances are squared Euclidean between the columns of each sample. ``k`` is clipped to L
    so tiny temporal lengths still work.
    """
    k = min(int(k), x.shape[-1])
    with torch.no_grad():  # the graph's topology carries no gradient (as in G-TAD); the gathered features do
        sq = (x * x).sum(dim=1)  # (B, L)
        inner = torch.bmm(x.transpose(1, 2), x)  # (B, L, L)
        neg_dist = 2.0 * inner - sq.unsqueeze(2) - sq.unsqueeze(1)  # -||x_i - x_j||^2
        return neg_dist.topk(k, dim=-1).indices


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Neighbour features: x (B, C, L), idx (B, L, k) -> (B, C, L, k), out[b, :, i, j] = x[b, :, idx[b, i, j]]."""
    b, c, length = x.shape
    k = idx.shape[-1]
    flat = idx.reshape(b, 1, length * k).expand(b, c, length * k)
    return torch.gather(x, 2, flat).reshape(b, c, length, k)


class GCNeXt(nn.Module):
    """One GCNeXt block: ReLU(x + temporal branch(x) + semantic branch(x)), channels in = channels out.

    Both branches are ResNeXt-style bottlenecks of width ``groups * width_per_group`` (32 × 4 = 128 in G-TAD).
    Temporal: 1×1 → grouped conv k=3 over time → 1×1. Semantic: edge features ``[x_j, x_i]`` for the k nearest
    neighbours j of i → 1×1 → grouped 1×1 → 1×1 → max over the k neighbours (EdgeConv). No normalisation layers,
    as in the published code.
    """

    def __init__(self, channels: int, *, k: int = 3, groups: int = 32, width_per_group: int = 4) -> None:
        super().__init__()
        width = groups * width_per_group
        self.k = k
        self.temporal = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, channels, kernel_size=1),
        )
        self.semantic = nn.Sequential(
            nn.Conv2d(2 * channels, width, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel_size=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = knn_indices(x, self.k)
        neighbours = gather_neighbours(x, idx)  # (B, C, L, k)
        centre = x.unsqueeze(-1).expand_as(neighbours)
        # G-TAD's edge feature is [x_j, x_i]; [x_i, x_j - x_i] is the same function class (an invertible linear
        # map of it, absorbed by the first 1×1 conv), so we keep the published order (weights stay compatible).
        edges = torch.cat((neighbours, centre), dim=1)  # (B, 2C, L, k)
        semantic = self.semantic(edges).amax(dim=-1)
        return torch.relu(x + self.temporal(x) + semantic)
