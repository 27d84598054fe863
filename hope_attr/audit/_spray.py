"""SpRAy: spectral relevance analysis of many attribution maps (Lapuschkin et al. 2019).

Maps that a model computes in the same way look alike; a strategy shared by part of a class (a
watermark, a patch: a "Clever Hans" cue) shows up as a group of similar maps. SpRAy finds such
groups with the steps of the paper and of CoRelAy: downsize and normalize the maps, connect each
to its nearest neighbours, take the spectrum of the graph's normalized Laplacian (its eigengap
suggests the number of groups), cluster spectrally, and embed for a picture. Every numerical
step is scikit-learn's or SciPy's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hope_attr.audit._store import AttributionStore


@dataclass(frozen=True)
class SprayResult:
    """What :func:`spray` found.

    Attributes:
        indices: the analysed examples' data set indices (positions ``0..N-1`` for an array).
        clusters: each example's cluster, ``0..n_clusters-1``, numbered by decreasing size.
        n_clusters: the number of clusters (given, or chosen at the largest eigengap).
        eigenvalues: the smallest eigenvalues of the normalized graph Laplacian, ascending.
        features: the downsized, normalized maps that were compared, ``(N, h, w)`` or ``(N, D)``.
        embedding: a 2-D embedding for plotting (t-SNE of the spectral embedding), or None.
        spectral: the spectral embedding the t-SNE embeds, ``(N, k)`` (the leading eigenvectors
            of the graph's normalized Laplacian, scikit-learn's ``spectral_embedding``), or None
            with ``embed=False``. :func:`hope_attr.audit.to_virelay` exports it.
    """

    indices: np.ndarray
    clusters: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    features: np.ndarray
    embedding: np.ndarray | None
    spectral: np.ndarray | None = None

    @property
    def eigengaps(self) -> np.ndarray:
        """``eigenvalues[k] - eigenvalues[k - 1]`` for ``k = 1..``: a large gap after ``k``
        eigenvalues suggests ``k`` clusters."""
        return np.diff(self.eigenvalues)

    def members(self, cluster: int) -> np.ndarray:
        """The data set indices of one cluster's examples."""
        return self.indices[self.clusters == cluster]

    def cluster_means(self) -> np.ndarray:
        """The mean feature map of each cluster, ``(n_clusters, *features.shape[1:])``."""
        return np.stack([self.features[self.clusters == c].mean(0) for c in range(self.n_clusters)])

    def plot(self) -> Any:
        """A matplotlib figure: each cluster's mean map, and the embedding coloured by cluster.

        Returns:
            The ``matplotlib.figure.Figure``.
        """
        import matplotlib.pyplot as plt

        means = self.cluster_means()
        panels = self.n_clusters + (self.embedding is not None)
        figure, axes = plt.subplots(1, panels, figsize=(1.9 * panels, 2.2), squeeze=False)
        axes = axes[0]
        for cluster, (axis, mean) in enumerate(zip(axes, means, strict=False)):
            limit = np.abs(mean).max() or 1.0
            picture = mean if mean.ndim == 2 else mean[None, :]
            axis.imshow(picture, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
            count = int((self.clusters == cluster).sum())
            axis.set_title(f"cluster {cluster}\n{count} maps", fontsize=8, color=f"C{cluster}")
            axis.set_xticks([])
            axis.set_yticks([])
        if self.embedding is not None:
            axis = axes[-1]
            for cluster in range(self.n_clusters):
                points = self.embedding[self.clusters == cluster]
                axis.scatter(points[:, 0], points[:, 1], s=4, color=f"C{cluster}")
            axis.set_title("t-SNE embedding", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
        figure.tight_layout()
        return figure


def spray(
    store: AttributionStore | np.ndarray | torch.Tensor,
    n_clusters: int | None = None,
    *,
    indices: Any = None,
    downsize: int = 4,
    n_neighbors: int = 10,
    max_clusters: int = 10,
    embed: bool = True,
    random_state: int = 0,
) -> SprayResult:
    """Spectral relevance analysis of stored maps.

    Args:
        store: an :class:`~hope_attr.audit.AttributionStore` or an array of maps ``(N, ...)``:
            ``(N, C, H, W)`` and ``(N, H, W)`` maps are images (channels summed), ``(N, D)``
            maps are feature vectors.
        n_clusters: the number of clusters; None picks it at the largest eigengap among
            ``2..max_clusters``.
        indices: which examples to analyse (data set indices for a store, positions for an
            array), e.g. those of one predicted class; None takes all.
        downsize: image maps are average-pooled by this factor per side (SpRAy compares coarse
            maps, so that small shifts do not separate them); 1 keeps them.
        n_neighbors: neighbours per map in the affinity graph.
        max_clusters: how many eigenvalues to compute (and the most clusters the gap may pick).
        embed: compute a t-SNE embedding of the spectral embedding for :meth:`SprayResult.plot`.
        random_state: seed of k-means and t-SNE.

    Returns:
        A :class:`SprayResult`.

    Raises:
        ImportError: scikit-learn is missing.
        ValueError: too few maps for ``n_neighbors``, or an invalid argument.

    Example:
        >>> import numpy as np
        >>> from hope_attr.audit import spray
        >>> rng = np.random.default_rng(0)
        >>> maps = rng.normal(size=(60, 8, 8))
        >>> maps[:20, :2, :2] += 5.0  # 20 maps share a hot top-left corner
        >>> maps[20:, 6:, 6:] += 5.0  # the other 40 a hot bottom-right one
        >>> result = spray(maps, downsize=2, embed=False)
        >>> result.n_clusters, result.members(1).tolist() == list(range(20))
        (2, True)
    """
    try:
        from scipy.sparse import csgraph
        from scipy.sparse.linalg import eigsh
        from sklearn.manifold import TSNE
        from sklearn.neighbors import kneighbors_graph
    except ImportError as error:
        raise ImportError(
            "spray needs scikit-learn: pip install scikit-learn (or 'hope_attr[audit]')"
        ) from error

    positions, maps = _select(store, indices)
    features = _features(maps, downsize)
    count = len(features)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an int >= 1, got {n_neighbors!r}")
    if count <= max(n_neighbors, max_clusters):
        raise ValueError(
            f"spray got {count} maps; it needs more than n_neighbors={n_neighbors} and "
            f"max_clusters={max_clusters}: analyse more examples or lower those"
        )
    if n_clusters is not None and not 2 <= n_clusters <= count - 1:
        raise ValueError(f"n_clusters must be in 2..{count - 1} or None, got {n_clusters!r}")

    flat = features.reshape(count, -1)
    connectivity = kneighbors_graph(flat, n_neighbors, include_self=False)
    affinity = connectivity.maximum(connectivity.T)  # symmetric: a neighbour either way
    # The smallest eigenvalues of L = I - D^-1/2 A D^-1/2 are 1 - the largest of D^-1/2 A D^-1/2,
    # which Lanczos finds quickly (the smallest of L directly converge slowly).
    laplacian = csgraph.laplacian(affinity.astype(np.float64), normed=True)
    identity_minus = -laplacian
    identity_minus.setdiag(identity_minus.diagonal() + 1.0)
    wanted = min(max_clusters + 1, count - 1)
    top = eigsh(identity_minus, k=wanted, which="LA", return_eigenvectors=False)
    eigenvalues = np.sort(np.clip(1.0 - top, 0.0, 2.0))
    if n_clusters is None:
        gaps = np.diff(eigenvalues)  # gaps[k - 1]: between eigenvalue k - 1 and k
        n_clusters = int(np.argmax(gaps[1:max_clusters]) + 2)

    with warnings.catch_warnings():
        # A graph of several components is what separate strategies look like, not a problem.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels, spectral = _cluster(affinity, n_clusters, max_clusters, embed, random_state)
    # Number clusters by decreasing size, so that results read the same from run to run.
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    clusters = np.argsort(order)[labels]

    embedding = None
    if spectral is not None:
        embedding = TSNE(
            n_components=2,
            perplexity=min(30.0, (count - 1) / 3),
            init="pca",
            random_state=random_state,
        ).fit_transform(spectral)
    return SprayResult(positions, clusters, n_clusters, eigenvalues, features, embedding, spectral)


def _cluster(
    affinity: Any, n_clusters: int, max_clusters: int, embed: bool, random_state: int
) -> tuple[np.ndarray, np.ndarray | None]:
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import spectral_embedding

    labels = SpectralClustering(
        n_clusters=n_clusters, affinity="precomputed", random_state=random_state
    ).fit_predict(affinity)
    spectral = None
    if embed:
        count = affinity.shape[0]
        spectral = spectral_embedding(
            affinity, n_components=min(max_clusters, count - 2), random_state=random_state
        )
    return labels, spectral


def _select(store: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(store, AttributionStore):
        stored = store.indices
        if indices is None:
            return stored, store.numpy()
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        positions = np.searchsorted(stored, wanted)
        present = (positions < len(stored)) & (
            stored[np.minimum(positions, len(stored) - 1)] == wanted
        )
        if not present.all():
            raise ValueError(
                f"examples {wanted[~present][:5].tolist()} are not in the store "
                "(indices are data set indices, see store.indices)"
            )
        return wanted, store.numpy()[positions]
    if isinstance(store, torch.Tensor):
        store = store.detach().cpu().numpy()
    if not isinstance(store, np.ndarray):
        raise TypeError(
            f"spray takes an AttributionStore or an array of maps, got {type(store).__name__}"
        )
    positions = np.arange(len(store)) if indices is None else np.asarray(indices).reshape(-1)
    return positions, store[positions]


def _features(maps: np.ndarray, downsize: int) -> np.ndarray:
    """Channel-summed, average-pooled maps, each scaled to a largest magnitude of 1."""
    if isinstance(downsize, bool) or not isinstance(downsize, int) or downsize < 1:
        raise ValueError(f"downsize must be an int >= 1, got {downsize!r}")
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 4:
        maps = maps.sum(1)  # channels, as Captum's visualizer does
    if maps.ndim == 3 and downsize > 1:
        height, width = maps.shape[1:]
        size = (math.ceil(height / downsize), math.ceil(width / downsize))
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None], size)
        maps = pooled[:, 0].numpy()
    elif maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (N, D), (N, H, W) or (N, C, H, W), got shape {maps.shape}")
    # Scale, not content, differs between confident and hesitant examples: compare shapes.
    scale = np.abs(maps.reshape(len(maps), -1)).max(1)
    scale[scale == 0] = 1.0
    return maps / scale.reshape(-1, *([1] * (maps.ndim - 1)))
