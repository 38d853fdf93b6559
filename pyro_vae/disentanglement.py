r"""Disentanglement metrics of latent codes against known generative factors.

Given codes ``c`` of shape ``(N, D)`` (e.g. posterior means, :func:`latent_codes`) and
integer factors ``v`` of shape ``(N, K)`` (e.g. ``Splits.test_factors`` of the ``sprites``
dataset):

**Mutual Information Gap** (MIG; Chen et al. 2018, "Isolating sources of disentanglement
in VAEs"). Each code dimension is discretised into ``num_bins`` equal-width bins over
its range (as in disentanglement_lib, Locatello et al. 2019); the mutual information
:math:`I(c_j; v_k)` is computed from the joint histogram (plug-in estimate, nats) and

.. math::

    \mathrm{MIG} = \frac1K \sum_k \frac{I(c_{j^{(1)}_k}; v_k) - I(c_{j^{(2)}_k}; v_k)}{H(v_k)},

with :math:`j^{(1)}_k, j^{(2)}_k` the codes of largest and second-largest MI with factor
:math:`k`. 1 when every factor is captured by one code alone, 0 when by none or by two
equally. Factors with one value (:math:`H = 0`) are left out. The binning makes MIG
depend on monotone transforms of the codes only through the bin edges; a factor with
more values than ``num_bins`` cannot reach 1.

**DCI** (Eastwood & Williams 2018, "A framework for the quantitative evaluation of
disentangled representations"). One classifier per factor predicts :math:`v_k` from all
codes; its impurity-based feature importances form column :math:`k` of the importance
matrix :math:`R \in \mathbb R^{D \times K}`. With :math:`P_{jk} = R_{jk} / \sum_{k'} R_{jk'}`
and :math:`\tilde P_{jk} = R_{jk} / \sum_{j'} R_{j'k}`:

* disentanglement :math:`\sum_j \rho_j (1 - H_K(P_{j\cdot}))`, weighted by
  :math:`\rho_j = \sum_k R_{jk} / \sum_{jk} R_{jk}` (entropy in base :math:`K`);
* completeness :math:`\frac1K \sum_k (1 - H_D(\tilde P_{\cdot k}))` (base :math:`D`);
* informativeness: the classifiers' accuracy on held-out points (mean over factors).

The classifiers are extremely randomised trees that consider every code at each split
(``sklearn.ensemble.ExtraTreesClassifier(max_features=None)``): fast (about 5 times
faster than a random forest here, and far faster than gradient boosting with 40-valued
factors), non-linear, and, since each split takes the best code, they give (near) zero
importance to codes that carry no information about the factor. Eastwood & Williams
used Lasso and random forests; disentanglement_lib uses gradient-boosted trees. Scores
from different regressors are not directly comparable.
"""

import math

import numpy as np
import torch
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.metrics import mutual_info_score

from .errors import DataError
from .runs import load_run

__all__ = [
    "dci",
    "disentanglement_scores",
    "discretize",
    "latent_codes",
    "mig",
    "mutual_information",
    "score_run",
]


@torch.no_grad()
def latent_codes(vae, x, batch_size=1024):
    """Posterior means of the top latent layer for the data ``x``: a float64 ``(N, d)`` numpy array."""
    was_training = vae.training
    vae.eval()
    try:
        codes = torch.cat([vae.encode(xb)[0] for xb in x.split(batch_size)])
    finally:
        vae.train(was_training)
    return codes.detach().double().cpu().numpy()


def _as_arrays(codes, factors):
    codes = np.asarray(codes.detach().cpu() if torch.is_tensor(codes) else codes, dtype=np.float64)
    factors = np.asarray(factors.detach().cpu() if torch.is_tensor(factors) else factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise DataError(
            f"codes must be (N, D) and factors (N, K) with the same N, got shapes {codes.shape} and "
            f"{factors.shape}."
        )
    if len(codes) < 2:
        raise DataError("Disentanglement scores need at least two data points.")
    if not np.all(np.isfinite(codes)):
        raise DataError("codes contain NaN or infinite values.")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.all(np.equal(np.mod(factors, 1), 0)):
            raise DataError("factors must be integer indices (one column per factor).")
        factors = factors.astype(np.int64)
    return codes, factors


def discretize(codes, num_bins=20):
    """Each column of ``codes`` binned into ``num_bins`` equal-width bins over its range: int ``(N, D)``."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=num_bins)
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return out


def mutual_information(discrete_codes, factors):
    """Plug-in mutual information (nats) of every code column with every factor column: ``(D, K)``."""
    return np.array([[mutual_info_score(factors[:, k], discrete_codes[:, j]) for k in range(factors.shape[1])]
                     for j in range(discrete_codes.shape[1])])


def mig(codes, factors, num_bins=20):
    """Mutual Information Gap. Returns ``{"mig", "mig_per_factor" (K,), "mutual_information" (D, K),
    "factor_entropy" (K,)}``; a factor with a single value gets NaN and is left out of the mean."""
    codes, factors = _as_arrays(codes, factors)
    mi = mutual_information(discretize(codes, num_bins), factors)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    ranked = np.sort(mi, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros(factors.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(entropy > 0, (ranked[0] - second) / entropy, np.nan)
    valid = gap[np.isfinite(gap)]
    return {
        "mig": float(valid.mean()) if len(valid) else math.nan,
        "mig_per_factor": gap,
        "mutual_information": mi,
        "factor_entropy": entropy,
    }


def _entropy(p, base):
    """Entropy with logarithms in ``base`` of the rows of ``p`` (each summing to 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-1) / math.log(base)


def dci(codes, factors, test_fraction=0.2, max_points=10000, num_trees=20, min_samples_leaf=5, seed=0):
    """DCI disentanglement, completeness and informativeness.

    Up to ``max_points`` points (a seeded subsample) are split into a training part and a
    held-out ``test_fraction``; per factor a forest of ``num_trees`` extremely randomised
    trees (leaves of at least ``min_samples_leaf`` points) is fitted.
    Returns ``{"disentanglement", "completeness", "informativeness" (held-out accuracy),
    "informativeness_train", "importance" (D, K), "accuracy" (K,)}``. Factors with one value
    are left out (NaN column); disentanglement needs two factors and completeness two codes.
    """
    codes, factors = _as_arrays(codes, factors)
    rng = np.random.default_rng(seed)
    n = len(codes)
    index = rng.permutation(n)[:max_points]
    num_test = max(1, int(round(test_fraction * len(index))))
    test, train = index[:num_test], index[num_test:]
    if len(train) < 2:
        raise DataError(f"DCI needs at least two training points, got {len(train)} of {n}.")
    d, k = codes.shape[1], factors.shape[1]
    importance = np.full((d, k), np.nan)
    accuracy = np.full(k, np.nan)
    train_accuracy = np.full(k, np.nan)
    for f in range(k):
        if len(np.unique(factors[train, f])) < 2:
            continue
        forest = ExtraTreesClassifier(n_estimators=num_trees, max_features=None,
                                      min_samples_leaf=min_samples_leaf, random_state=seed, n_jobs=1)
        forest.fit(codes[train], factors[train, f])
        importance[:, f] = forest.feature_importances_
        accuracy[f] = forest.score(codes[test], factors[test, f])
        train_accuracy[f] = forest.score(codes[train], factors[train, f])
    used = np.isfinite(accuracy)
    r = np.abs(importance[:, used])
    disentanglement = completeness = math.nan
    if r.size and r.sum() > 0:
        if r.shape[1] > 1:
            rows = r.sum(axis=1)
            p = r / np.where(rows > 0, rows, 1)[:, None]
            disentanglement = float(((1 - _entropy(p, r.shape[1])) * rows / rows.sum()).sum())
        if d > 1:
            cols = r.sum(axis=0)
            p = (r / np.where(cols > 0, cols, 1)[None, :]).T
            completeness = float((1 - _entropy(p, d)).mean())
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(accuracy[used].mean()) if used.any() else math.nan,
        "informativeness_train": float(train_accuracy[used].mean()) if used.any() else math.nan,
        "importance": importance,
        "accuracy": accuracy,
    }


def disentanglement_scores(codes, factors, factor_names=None, num_bins=20, seed=0, **dci_options):
    """MIG and DCI of ``codes`` ``(N, D)`` against integer ``factors`` ``(N, K)``, as a JSON-ready dict.

    Keys: ``mig``, ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``
    (held-out accuracy), ``dci_informativeness_train``, and ``per_factor``: for each factor
    (named by ``factor_names``, default ``factor_0`` …) its ``mig``, ``accuracy`` and the
    code dimension of largest mutual information (``best_code``). ``dci_options`` go to :func:`dci`.
    """
    codes, factors = _as_arrays(codes, factors)
    names = [f"factor_{k}" for k in range(factors.shape[1])] if factor_names is None else list(factor_names)
    if len(names) != factors.shape[1]:
        raise DataError(f"{len(names)} factor names for {factors.shape[1]} factors.")
    m = mig(codes, factors, num_bins)
    d = dci(codes, factors, seed=seed, **dci_options)

    def plain(value):
        return None if not math.isfinite(value) else float(value)

    return {
        "mig": plain(m["mig"]),
        "dci_disentanglement": plain(d["disentanglement"]),
        "dci_completeness": plain(d["completeness"]),
        "dci_informativeness": plain(d["informativeness"]),
        "dci_informativeness_train": plain(d["informativeness_train"]),
        "per_factor": {
            name: {
                "mig": plain(m["mig_per_factor"][k]),
                "accuracy": plain(d["accuracy"][k]),
                "best_code": int(np.argmax(m["mutual_information"][:, k])),
            }
            for k, name in enumerate(names)
        },
        "num_points": int(len(codes)),
        "num_bins": int(num_bins),
    }


def score_run(run, split="test", max_points=10000, **options):
    """:func:`disentanglement_scores` of a trained run (a :class:`~pyro_vae.runs.Run` or a run
    directory) on the codes of a split whose dataset has factors (e.g. ``sprites``)."""
    if not hasattr(run, "vae"):
        run, _ = load_run(run)
    factors = getattr(run.splits, f"{split}_factors", None)
    if factors is None:
        raise DataError(
            f"The dataset '{run.splits.info.get('name')}' has no generative factors for split '{split}' "
            "(disentanglement metrics need a dataset such as 'sprites')."
        )
    # val and test: the run's fixed evaluation views (binarised once where training binarises per batch)
    x = getattr(run, split) if split in ("val", "test") else getattr(run.splits, split)
    x, factors = x[:max_points], factors[:max_points]
    return disentanglement_scores(latent_codes(run.vae, x), factors, run.splits.info.get("factor_names"),
                                  **options)
