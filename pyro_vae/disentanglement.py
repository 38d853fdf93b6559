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

The classifier is chosen with ``regressor``: ``"gbt"``, sklearn's
``GradientBoostingClassifier()`` with its defaults (100 stages of depth-3 trees), as
disentanglement_lib, and so the one behind the published tables (Locatello et al. 2019 and
the papers that use disentanglement_lib or disent); or ``"extra-trees"``, extremely
randomised trees that consider every code at each split
(``ExtraTreesClassifier(max_features=None)``): far faster (gradient boosting fits one tree
per class and stage, so a 40-valued factor costs 40 times a binary one), non-linear and,
since each split takes the best code, near zero importance for codes without information.
Eastwood & Williams used Lasso and random forests. D and C from different regressors are
not comparable (on one β = 4 model ExtraTrees' D and C were 2.1–2.4 times GBT's).
Completeness is the mean over factors; disentanglement_lib weights factors by their share of
the importance, which is the same thing here because each classifier's importances sum to 1.

**β-VAE score** (Higgins et al. 2017). A factor k is drawn; B pairs of points that share
factor k (all else random) give the feature :math:`\frac1B\sum_b |c^{(1)}_b - c^{(2)}_b|`
(per code); a logistic regression predicts k from it. The score is its held-out accuracy
(chance 1/K).

**FactorVAE score** (Kim & Mnih 2018). Codes are divided by their standard deviation over
the data; codes with a standard deviation below ``prune_threshold`` (0.05, as the
disentanglement_lib studies) are dropped. A factor k is drawn and fixed at one value; in a
batch of B points with that value the code of least (normalised) variance is the vote for
k. A majority-vote classifier (code → factor) is read off the training votes; the score
is its accuracy on new votes.

**SAP** (Kumar et al. 2018). For every code j and factor k, a linear SVM on the code alone
(``LinearSVC(C=0.01, class_weight="balanced")``) predicts the factor's value; with
:math:`S_{jk}` its held-out accuracy, SAP is the mean over factors of the gap between the
largest and second-largest :math:`S_{jk}` over codes (continuous factors: the squared
correlation instead, ``continuous=True``).

**Modularity and explicitness** (Ridgeway & Mozer 2018). With :math:`m_{jk}` the mutual
information of the binned code j with factor k and :math:`\theta_j = \max_k m_{jk}`,
a code's modularity is :math:`1 - \sum_{k \ne k^*} m_{jk}^2 / (\theta_j^2 (K-1))` (0 for a
code with no information), averaged over codes. Explicitness: per factor, a logistic
regression on all standardised codes; its one-vs-rest ROC-AUC (macro average over values)
on held-out points, averaged over factors.

The sampling metrics (β-VAE, FactorVAE score) need batches in which a factor is fixed.
Here they are drawn from a *pool* of codes with known factors (points sharing the value,
drawn with replacement), which is a sample from the conditional when the factors are
independent (as on the sprites grid); disentanglement_lib renders fresh images instead.
Published values use B = 64, 10,000 training and 5,000 evaluation samples: the defaults.
"""

import math

import numpy as np
import torch
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import label_binarize
from sklearn.svm import LinearSVC

from .errors import DataError
from .runs import load_run

__all__ = [
    "METRICS",
    "REGRESSORS",
    "beta_vae_score",
    "dci",
    "disentanglement_report",
    "factor_vae_score",
    "modularity_explicitness",
    "sap",
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


REGRESSORS = ("gbt", "extra-trees")
"""The classifiers :func:`dci` can use: gradient-boosted trees (published tables) or ExtraTrees (fast)."""


def _classifier(regressor, num_trees, min_samples_leaf, seed):
    if regressor == "gbt":
        return GradientBoostingClassifier(random_state=seed)
    if regressor == "extra-trees":
        return ExtraTreesClassifier(n_estimators=num_trees, max_features=None,
                                    min_samples_leaf=min_samples_leaf, random_state=seed, n_jobs=1)
    raise DataError(f"Unknown DCI regressor '{regressor}'; choose one of {', '.join(REGRESSORS)}.")


def dci(codes, factors, test_fraction=0.2, max_points=10000, num_trees=20, min_samples_leaf=5, seed=0,
        regressor="extra-trees"):
    """DCI disentanglement, completeness and informativeness.

    Up to ``max_points`` points (a seeded subsample) are split into a training part and a
    held-out ``test_fraction``; per factor a classifier is fitted: ``regressor="gbt"``
    (sklearn's gradient boosting with its defaults, as disentanglement_lib) or
    ``"extra-trees"`` (a forest of ``num_trees`` extremely randomised trees with leaves of at
    least ``min_samples_leaf`` points).
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
        forest = _classifier(regressor, num_trees, min_samples_leaf, seed)
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


class _FactorPool:
    """Draws points that share one factor's value from a pool of (code, factor) rows."""

    def __init__(self, factors, rng):
        self.factors, self.rng = factors, rng
        self.order = [np.argsort(f, kind="stable") for f in factors.T]
        self.sorted = [f[o] for f, o in zip(factors.T, self.order)]

    def sharing(self, k, values, size):
        """``(len(values), size)`` indices of points whose factor k has the given values."""
        first = np.searchsorted(self.sorted[k], values, side="left")
        count = np.searchsorted(self.sorted[k], values, side="right") - first
        offsets = (self.rng.random((len(values), size)) * count[:, None]).astype(np.int64)
        return self.order[k][first[:, None] + offsets]

    def varying(self):
        """Factors with more than one value (a fixed factor is only informative then)."""
        return np.array([k for k in range(self.factors.shape[1]) if len(np.unique(self.factors[:, k])) > 1])


def _beta_vae_features(codes, pool, batch_size, num_points):
    factors = pool.varying()
    labels = pool.rng.choice(factors, size=num_points)
    features = np.empty((num_points, codes.shape[1]))
    for k in factors:
        rows = np.flatnonzero(labels == k)
        first = pool.rng.integers(len(codes), size=(len(rows), batch_size))
        second = pool.sharing(k, pool.factors[first.ravel(), k], 1).reshape(first.shape)
        features[rows] = np.abs(codes[first] - codes[second]).mean(axis=1)
    return features, labels


def beta_vae_score(codes, factors, batch_size=64, num_train=10000, num_eval=5000, seed=0):
    """β-VAE score (Higgins et al. 2017): held-out accuracy of a logistic regression that names the
    fixed factor from the mean absolute code difference of ``batch_size`` pairs sharing it.
    Returns ``{"train_accuracy", "eval_accuracy"}``."""
    codes, factors = _as_arrays(codes, factors)
    pool = _FactorPool(factors, np.random.default_rng(seed))
    if len(pool.varying()) < 2:
        raise DataError("The β-VAE score needs at least two factors with more than one value.")
    x_train, y_train = _beta_vae_features(codes, pool, batch_size, num_train)
    x_eval, y_eval = _beta_vae_features(codes, pool, batch_size, num_eval)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)),
            "eval_accuracy": float(model.score(x_eval, y_eval))}


def _factor_vae_votes(codes, pool, scale, batch_size, num_points):
    factors = pool.varying()
    votes = np.zeros((codes.shape[1], factors.max() + 1), dtype=np.int64)
    labels = pool.rng.choice(factors, size=num_points)
    for k in factors:
        rows = np.count_nonzero(labels == k)
        values = pool.factors[pool.rng.integers(len(codes), size=rows), k]
        batches = codes[pool.sharing(k, values, batch_size)] / scale  # (rows, B, D')
        np.add.at(votes[:, k], np.argmin(batches.var(axis=1, ddof=1), axis=1), 1)
    return votes


def factor_vae_score(codes, factors, batch_size=64, num_train=10000, num_eval=5000, prune_threshold=0.05,
                     seed=0):
    """FactorVAE score (Kim & Mnih 2018): accuracy of the majority-vote classifier from the code of
    least normalised variance in batches with one factor fixed. Returns ``{"train_accuracy",
    "eval_accuracy", "num_active_dims"}`` (0 for all when every code is pruned)."""
    codes, factors = _as_arrays(codes, factors)
    pool = _FactorPool(factors, np.random.default_rng(seed))
    scale = codes.std(axis=0, ddof=1)
    active = scale >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    codes, scale = codes[:, active], scale[active]
    train = _factor_vae_votes(codes, pool, scale, batch_size, num_train)
    evaluation = _factor_vae_votes(codes, pool, scale, batch_size, num_eval)
    classifier = train.argmax(axis=1)  # code -> factor
    codes_index = np.arange(len(classifier))
    return {"train_accuracy": float(train[codes_index, classifier].sum() / train.sum()),
            "eval_accuracy": float(evaluation[codes_index, classifier].sum() / evaluation.sum()),
            "num_active_dims": int(active.sum())}


def _split(n, test_fraction, max_points, seed):
    index = np.random.default_rng(seed).permutation(n)[:max_points]
    num_test = max(1, int(round(test_fraction * len(index))))
    return index[num_test:], index[:num_test]


def sap(codes, factors, test_fraction=0.2, max_points=10000, continuous=False, seed=0):
    """SAP score (Kumar et al. 2018): mean over factors of the gap between the two codes that best
    predict it alone. Returns ``{"sap", "score_matrix" (D, K)}``."""
    codes, factors = _as_arrays(codes, factors)
    train, test = _split(len(codes), test_fraction, max_points, seed)
    d, k = codes.shape[1], factors.shape[1]
    score = np.zeros((d, k))
    for j in range(d):
        for f in range(k):
            if continuous:
                cov = np.cov(codes[train, j], factors[train, f], ddof=1)
                score[j, f] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            elif len(np.unique(factors[train, f])) > 1:
                svm = LinearSVC(C=0.01, class_weight="balanced").fit(codes[train, j:j + 1], factors[train, f])
                score[j, f] = np.mean(svm.predict(codes[test, j:j + 1]) == factors[test, f])
    ranked = np.sort(score, axis=0)
    gap = ranked[-1] - ranked[-2] if d > 1 else ranked[-1]
    return {"sap": float(gap.mean()), "score_matrix": score}


def modularity(mi):
    """Ridgeway & Mozer's modularity of a ``(D, K)`` mutual-information matrix (mean over codes)."""
    squared = np.square(mi)
    top = squared.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_code = 1 - (squared.sum(axis=1) - top) / (top * (mi.shape[1] - 1))
    return float(np.where(top > 0, per_code, 0.0).mean())


def modularity_explicitness(codes, factors, test_fraction=0.2, max_points=10000, num_bins=20, seed=0):
    """Modularity and explicitness (Ridgeway & Mozer 2018). Returns ``{"modularity",
    "explicitness" (held-out), "explicitness_train"}``."""
    codes, factors = _as_arrays(codes, factors)
    train, test = _split(len(codes), test_fraction, max_points, seed)
    mi = mutual_information(discretize(codes[train], num_bins), factors[train])
    result = {"modularity": modularity(mi)}
    mean, std = codes[train].mean(0), codes[train].std(0)
    std = np.where(std > 0, std, 1.0)
    standard = (codes - mean) / std
    aucs = {"train": [], "test": []}
    for f in range(factors.shape[1]):
        if len(np.unique(factors[train, f])) < 2:
            continue
        model = LogisticRegression(max_iter=1000).fit(standard[train], factors[train, f])
        for part, rows in (("train", train), ("test", test)):
            aucs[part].append(_roc_auc(model, standard[rows], factors[rows, f]))
    result["explicitness"] = float(np.nanmean(aucs["test"])) if aucs["test"] else math.nan
    result["explicitness_train"] = float(np.nanmean(aucs["train"])) if aucs["train"] else math.nan
    return result


def _roc_auc(model, x, y):
    """Macro one-vs-rest ROC-AUC over the classes present in ``y``."""
    proba = model.predict_proba(x)
    if len(model.classes_) == 2:
        return roc_auc_score(y == model.classes_[1], proba[:, 1]) if len(np.unique(y)) == 2 else math.nan
    onehot = label_binarize(y, classes=model.classes_)
    present = (onehot.sum(0) > 0) & (onehot.sum(0) < len(y))
    if not present.any():
        return math.nan
    return roc_auc_score(onehot[:, present], proba[:, present], average="macro")


METRICS = ("mig", "dci", "beta_vae", "factor_vae", "sap", "modularity")
"""What :func:`disentanglement_scores` can compute (``dci`` includes its informativeness,
``modularity`` the explicitness)."""


def _plain(value):
    return None if value is None or not math.isfinite(value) else float(value)


def disentanglement_scores(codes, factors, factor_names=None, num_bins=20, seed=0, metrics=METRICS,
                           regressor="gbt", **dci_options):
    """The ``metrics`` (:data:`METRICS`) of ``codes`` ``(N, D)`` against integer ``factors`` ``(N, K)``,
    as a JSON-ready dict.

    Keys, for the metrics asked for: ``mig``; ``dci_disentanglement``, ``dci_completeness``,
    ``dci_informativeness`` (held-out accuracy), ``dci_informativeness_train`` and
    ``dci_regressor`` (``regressor``: ``gbt``, as published tables, or ``extra-trees``);
    ``beta_vae_score``, ``factor_vae_score`` (held-out accuracies); ``sap``; ``modularity``,
    ``explicitness``; and ``per_factor``: for each factor (named by ``factor_names``, default
    ``factor_0`` …) its ``mig``, DCI ``accuracy`` and the code of largest mutual information
    (``best_code``). ``dci_options`` go to :func:`dci`.
    """
    codes, factors = _as_arrays(codes, factors)
    names = [f"factor_{k}" for k in range(factors.shape[1])] if factor_names is None else list(factor_names)
    if len(names) != factors.shape[1]:
        raise DataError(f"{len(names)} factor names for {factors.shape[1]} factors.")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise DataError(f"Unknown disentanglement metric(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(METRICS)}.")
    m = mig(codes, factors, num_bins)
    out = {"mig": _plain(m["mig"])} if "mig" in metrics else {}
    d = {"accuracy": np.full(factors.shape[1], np.nan)}
    if "dci" in metrics:
        d = dci(codes, factors, seed=seed, regressor=regressor, **dci_options)
        out.update({f"dci_{key}": _plain(d[key]) for key in
                    ("disentanglement", "completeness", "informativeness", "informativeness_train")})
        out["dci_regressor"] = regressor
    if "beta_vae" in metrics:
        out["beta_vae_score"] = beta_vae_score(codes, factors, seed=seed)["eval_accuracy"]
    if "factor_vae" in metrics:
        out["factor_vae_score"] = factor_vae_score(codes, factors, seed=seed)["eval_accuracy"]
    if "sap" in metrics:
        out["sap"] = sap(codes, factors, seed=seed)["sap"]
    if "modularity" in metrics:
        me = modularity_explicitness(codes, factors, num_bins=num_bins, seed=seed)
        out.update(modularity=_plain(me["modularity"]), explicitness=_plain(me["explicitness"]))
    out["per_factor"] = {
        name: {
            "mig": _plain(m["mig_per_factor"][k]),
            "accuracy": _plain(d["accuracy"][k]),
            "best_code": int(np.argmax(m["mutual_information"][:, k])),
        }
        for k, name in enumerate(names)
    }
    out.update(num_points=int(len(codes)), num_bins=int(num_bins))
    return out


def disentanglement_report(vae, x, factors, factor_names=None, **options):
    """:func:`disentanglement_scores` of the posterior-mean codes of ``vae`` on the data ``x``
    with known integer ``factors`` ``(N, K)``: the one call for ``eval.json``
    (``options`` as :func:`disentanglement_scores`: ``metrics``, ``regressor``, ``seed`` …)."""
    return disentanglement_scores(latent_codes(vae, x), factors, factor_names, **options)


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
    return disentanglement_report(run.vae, x, factors, run.splits.info.get("factor_names"), **options)
