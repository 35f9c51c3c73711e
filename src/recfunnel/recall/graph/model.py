"""LightGCN (He et al., SIGIR 2020): id embeddings smoothed over the user-item graph.

    A_hat = D^-1/2 A D^-1/2            A: the (n_users + n_items)^2 bipartite adjacency
    E^(0) = [user ids; item ids]       the only learned parameters
    E^(k+1) = A_hat E^(k)              no weights, no non-linearity
    E = mean(E^(0), ..., E^(K))        the final user and item vectors
    score(u, i) = <e_u, e_i>

A pure `nn.Module` built from sizes; the graph comes in as a tensor, so the module knows
nothing of ratings or id spaces (the channel in `graph.channel` owns those).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the bipartite graph with an edge per (users[e], items[e]) pair.

    users, items (n_edges,) row indices in [0, n_users) and [0, n_items); repeated pairs
    count once. Returns a symmetric float32 CSR (n_users + n_items, n_users + n_items),
    user nodes first; an isolated node has an all-zero row (no division by zero).
    """
    n = n_users + n_items
    rows = np.r_[users, n_users + np.asarray(items)]
    cols = np.r_[n_users + np.asarray(items), users]
    adjacency = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    adjacency.data[:] = 1.0  # duplicates were summed: an edge is there or not
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0).astype(np.float32)
    return (sp.diags(scale) @ adjacency @ sp.diags(scale)).astype(np.float32).tocsr()


def to_torch(matrix: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR as a torch sparse CSR float32 tensor (same shape and entries)."""
    matrix = matrix.tocsr()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
        )


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A, with the gradient A^T g = A g.

    torch's own backward of a CSR product builds the transpose on every call, which costs
    more than the product itself; A is symmetric, so the backward is the same product."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, ctx.adjacency @ grad


class LightGCN(nn.Module):
    """User and item id embeddings propagated over a normalised graph (module docstring)."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.n_users, self.n_items, self.layers = n_users, n_items, layers
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        # Small random vectors (as in the paper's code): propagation averages them, so large
        # ones would make the early dot products, and BPR's gradients, saturate.
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def layer_outputs(self, adjacency: torch.Tensor) -> torch.Tensor:
        """(layers + 1, n_users + n_items, dim): E^(0), ..., E^(K), user rows first.

        adjacency: the symmetric normalised graph (n_users + n_items)^2, sparse CSR."""
        x = torch.cat([self.user.weight, self.item.weight])
        outputs = [x]
        for _ in range(self.layers):
            x = _SymmetricSpMM.apply(adjacency, x)
            outputs.append(x)
        return torch.stack(outputs)

    def forward(self, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The final vectors: users (n_users, dim) and items (n_items, dim)."""
        final = self.layer_outputs(adjacency).mean(dim=0)
        return final[: self.n_users], final[self.n_users :]
