"""Every test-time reading of a trained model, and the post-hoc corrections scored beside them.

The paper (Sec. 2.2) says the K-way classifier "is employed to predict the class of the data with the help of the
correspondence between the K clusters and the original C classes": predict a cluster, answer its class. That is
``max`` (the default, ``model.inference``). The other readings are computed from the same forward pass:

* ``max``: class score = its best cluster logit; softmax over the C scores.
* ``sum``: softmax over the K clusters, each class's cluster probabilities summed. Beware what it means: with soft
  labels that put all of a sample's mass on its own class's clusters, L2 is CE on this summed probability plus a
  within-class term, so the summed reading is an ordinary (imbalanced) C-way classifier again; ``max`` is not (a
  class split into u_c near-interchangeable clusters scores about P(c) / u_c per cluster).
* ``fuse``: the ``sum`` probabilities averaged with the feature-balancing head's softmax (an ensemble of the heads).
* ``fbh``: the feature-balancing head alone (Eq. 1's z_i).

Without class division (K = C) ``max`` and ``sum`` are the same classifier; ``fuse`` and ``fbh`` need the FBH.

Post-hoc corrections (never chosen on test; for searches on validation and the reproduction's notes):

* logit adjustment (Menon et al., ICLR 2021): ``log p_c - tau * log pi_c`` on the default reading, pi = the label
  distribution that reading was trained on (:func:`log_prior`: class frequencies for ``sum`` / ``fuse`` / ``fbh``,
  the per-cluster frequency n_c / u_c for ``max``); ``la_tau{0.5,1.0,1.5,2.0}``.
* tau-normalisation (Kang et al., ICLR 2020): classifier rows ``w_k / ||w_k||^tau``, logits = pooled features times
  the rescaled rows with no bias (their ``pnorm`` + dot product), then the default reading; ``taunorm{0.5,1.0}``.
  Skipped for cosine classifiers (LDAM's), whose rows are normalised already.

All functions return log-probabilities ``[B, C]`` (rows log-sum-exp to 0), so argmax, confidence and NLL are taken
the same way for every reading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "READINGS",
    "LA_TAUS",
    "TAU_NORMS",
    "readings_of",
    "class_log_probs",
    "logit_adjusted",
    "tau_normalised_logits",
    "posthoc_names",
    "log_prior",
]

READINGS = ("max", "sum", "fuse", "fbh")
LA_TAUS = (0.5, 1.0, 1.5, 2.0)  # Menon et al. report tau = 1 as the Bayes-optimal choice; the grid brackets it
TAU_NORMS = (0.5, 1.0)  # Kang et al.: tau in [0, 1], chosen on validation


def readings_of(has_fbh: bool) -> tuple[str, ...]:
    """The readings a model supports: ``max`` and ``sum`` always, ``fuse`` and ``fbh`` with the FBH."""
    return READINGS if has_fbh else READINGS[:2]


def posthoc_names(normed_classifier: bool = False) -> tuple[str, ...]:
    names = tuple(f"la_tau{t}" for t in LA_TAUS)
    return names if normed_classifier else names + tuple(f"taunorm{t}" for t in TAU_NORMS)


def _grouped_max(logits: torch.Tensor, cluster_to_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = cluster_to_class.expand(logits.shape[0], -1)
    out = logits.new_full((logits.shape[0], num_classes), float("-inf"))
    return out.scatter_reduce(1, idx, logits, reduce="amax", include_self=True)


def _sum_log_probs(logits: torch.Tensor, cluster_to_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log sum_{k in c} softmax(logits)_k, exactly (a grouped log-sum-exp, no underflow to log 0)."""
    peak = _grouped_max(logits, cluster_to_class, num_classes)  # [B, C]
    shifted = (logits - peak.gather(1, cluster_to_class.expand(logits.shape[0], -1))).exp()
    per_class = shifted.new_zeros(peak.shape).index_add_(1, cluster_to_class, shifted)
    return (per_class.log() + peak).log_softmax(dim=1)


def class_log_probs(
    reading: str, logits: torch.Tensor, cluster_to_class: torch.Tensor, num_classes: int, fbh: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, C]`` class log-probabilities of one reading from the K cluster logits (and the FBH logits)."""
    logits = logits.float()
    if reading == "max":
        return _grouped_max(logits, cluster_to_class, num_classes).log_softmax(dim=1)
    if reading == "sum":
        return _sum_log_probs(logits, cluster_to_class, num_classes)
    if fbh is None:
        raise ValueError(f"reading {reading!r} needs the feature-balancing head's logits; this model has no FBH")
    if reading == "fbh":
        return fbh.float().log_softmax(dim=1)
    if reading == "fuse":
        both = torch.stack([_sum_log_probs(logits, cluster_to_class, num_classes), fbh.float().log_softmax(dim=1)])
        return torch.logsumexp(both, dim=0) - torch.log(torch.tensor(2.0, device=logits.device))
    raise ValueError(f"reading {reading!r} is unknown; allowed: {', '.join(READINGS)}")


def logit_adjusted(log_probs: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Menon et al.'s post-hoc logit adjustment: ``log p_c - tau * log prior_c`` (argmax is what counts)."""
    return log_probs - tau * log_prior


def tau_normalised_logits(pooled: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Kang et al.'s tau-normalised classifier: ``pooled @ (w_k / ||w_k||^tau)^T`` (no bias, as their ``pnorm``)."""
    w = weight.float()
    return pooled.float() @ (w / torch.linalg.vector_norm(w, dim=1, keepdim=True).pow(tau)).t()


def log_prior(class_counts, clusters_per_class=None, reading: str = "sum") -> torch.Tensor:
    """log of the label distribution the reading's scores were trained on, per class (Menon et al.'s pi).

    ``sum``, ``fuse`` and ``fbh`` read class probabilities trained on class labels: pi_c = n_c / N. ``max`` reads one
    cluster logit per class, and the K-way head was trained on cluster labels whose marginal under the soft labels of
    Eq. 4 is n_c / u_c per cluster (alpha on the own cluster plus (1 - alpha) / (u_c - 1) from each sibling, with
    near-equal clusters): pi_c = n_c / (u_c N). Without class division (u_c = 1) both are the class frequencies.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if reading == "max" and clusters_per_class is not None:
        counts = counts / torch.as_tensor(clusters_per_class, dtype=torch.float64)
    return F.normalize(counts, p=1, dim=0).log().float()
