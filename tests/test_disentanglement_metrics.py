"""β-VAE score, FactorVAE score, SAP, modularity/explicitness and DCI(GBT) against independent code."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.svm import LinearSVC

from pyro_vae import VAE, DataError
from pyro_vae.disentanglement import (
    METRICS,
    beta_vae_score,
    dci,
    disentanglement_report,
    disentanglement_scores,
    factor_vae_score,
    modularity_explicitness,
    sap,
)

SIZES = (3, 6, 10, 8)


@pytest.fixture(scope="module")
def factors():
    return np.random.default_rng(0).integers(0, SIZES, size=(4000, len(SIZES)))


def ideal(factors, seed=1):
    rng = np.random.default_rng(seed)
    v = factors.astype(np.float64)
    codes = (v - v.mean(0)) / v.std(0) + 0.05 * rng.normal(size=v.shape)
    return np.concatenate([codes, 0.01 * rng.normal(size=(len(v), 1))], axis=1)


def pair_rotated(codes):
    """Codes 0, 1 and codes 2, 3 each rotated by 45°: every code carries two factors equally."""
    out = codes.copy()
    for a, b in ((0, 1), (2, 3)):
        out[:, a] = (codes[:, a] + codes[:, b]) / math.sqrt(2)
        out[:, b] = (codes[:, a] - codes[:, b]) / math.sqrt(2)
    return out


def noise(factors):
    return np.random.default_rng(5).normal(size=(len(factors), 5))


@pytest.mark.parametrize("metric, chance", [(beta_vae_score, 1 / 4), (factor_vae_score, 1 / 4)])
def test_sampling_metrics_ideal_rotated_noise(factors, metric, chance):
    top = metric(ideal(factors), factors, num_train=2000, num_eval=1000)["eval_accuracy"]
    rotated = metric(pair_rotated(ideal(factors)), factors, num_train=2000, num_eval=1000)["eval_accuracy"]
    random = metric(noise(factors), factors, num_train=2000, num_eval=1000)["eval_accuracy"]
    assert top > 0.97
    assert rotated < top - 0.2
    assert abs(random - chance) < 0.1


def independent_factor_vae_score(codes, factors, batch_size, num_train, num_eval, rng):
    """Kim & Mnih's procedure written out with loops (disentanglement_lib's formula, prune 0.05)."""
    scale = codes.std(axis=0, ddof=1)
    active = scale >= 0.05
    codes = codes[:, active] / scale[active]

    def votes(n):
        table = np.zeros((codes.shape[1], factors.shape[1]), dtype=int)
        for _ in range(n):
            k = rng.integers(factors.shape[1])
            value = factors[rng.integers(len(factors)), k]
            members = np.flatnonzero(factors[:, k] == value)
            batch = codes[rng.choice(members, size=batch_size)]
            table[np.argmin(batch.var(axis=0, ddof=1)), k] += 1
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    best = train.argmax(axis=1)
    return evaluation[np.arange(len(best)), best].sum() / evaluation.sum()


def test_factor_vae_score_matches_an_independent_implementation(factors):
    codes = pair_rotated(ideal(factors)) + 0.5 * noise(factors)
    ours = factor_vae_score(codes, factors, num_train=3000, num_eval=3000)["eval_accuracy"]
    theirs = independent_factor_vae_score(codes, factors, 64, 3000, 3000, np.random.default_rng(9))
    assert ours == pytest.approx(theirs, abs=0.03)
    assert 0.3 < ours < 0.97  # a case that is neither trivial nor chance


def test_factor_vae_score_with_every_code_pruned(factors):
    result = factor_vae_score(np.zeros((len(factors), 3)), factors)
    assert result == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def split(n, seed=0, test_fraction=0.2):
    index = np.random.default_rng(seed).permutation(n)
    num_test = int(round(test_fraction * n))
    return index[num_test:], index[:num_test]


def test_sap_matches_the_published_formula(factors):
    codes = pair_rotated(ideal(factors))
    train, test = split(len(codes))
    score = np.zeros((5, 4))
    for j in range(5):
        for k in range(4):
            svm = LinearSVC(C=0.01, class_weight="balanced").fit(codes[train, j:j + 1], factors[train, k])
            score[j, k] = np.mean(svm.predict(codes[test, j:j + 1]) == factors[test, k])
    top_two = np.sort(score, axis=0)[-2:]
    assert sap(codes, factors)["sap"] == pytest.approx(np.mean(top_two[1] - top_two[0]), abs=1e-12)
    assert sap(ideal(factors), factors)["sap"] > sap(codes, factors)["sap"] + 0.05
    assert sap(noise(factors), factors)["sap"] < 0.03


def test_continuous_sap_is_the_gap_in_squared_correlation(factors):
    codes = ideal(factors)
    train, _ = split(len(codes))
    r2 = np.array([[np.corrcoef(codes[train, j], factors[train, k])[0, 1] ** 2 for k in range(4)]
                   for j in range(5)])
    top_two = np.sort(r2, axis=0)[-2:]
    expected = np.mean(top_two[1] - top_two[0])
    assert sap(codes, factors, continuous=True)["sap"] == pytest.approx(expected, rel=1e-9)


def test_modularity_and_explicitness_match_the_published_formulas(factors):
    codes = pair_rotated(ideal(factors))
    train, test = split(len(codes))
    binned = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes[train].T], 1)
    mi = np.array([[mutual_info_score(factors[train, k], binned[:, j]) for k in range(4)] for j in range(5)])
    per_code = []
    for row in mi:
        theta, best = row.max(), row.argmax()
        others = sum(row[k] ** 2 for k in range(4) if k != best)
        per_code.append(1 - others / (theta ** 2 * 3) if theta > 0 else 0.0)
    mean, std = codes[train].mean(0), codes[train].std(0)
    aucs = []
    for k in range(4):
        model = LogisticRegression(max_iter=1000).fit((codes[train] - mean) / std, factors[train, k])
        onehot = np.eye(SIZES[k])[factors[test, k]]
        aucs.append(roc_auc_score(onehot, model.predict_proba((codes[test] - mean) / std), average="macro"))
    result = modularity_explicitness(codes, factors)
    assert result["modularity"] == pytest.approx(np.mean(per_code), abs=1e-12)
    assert result["explicitness"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert modularity_explicitness(ideal(factors), factors)["modularity"] > result["modularity"] + 0.1


def test_dci_with_gradient_boosting_matches_disentanglement_lib_formula(factors):
    """Importances of sklearn's default GBT, D and C by scipy entropies weighted as disentanglement_lib."""
    codes, f = pair_rotated(ideal(factors))[:600], factors[:600, :2]
    train, test = split(600)
    importance = np.stack([GradientBoostingClassifier(random_state=0).fit(codes[train], f[train, k])
                           .feature_importances_ for k in range(2)], 1)
    per_code = 1 - scipy.stats.entropy(importance.T + 1e-11, base=2)
    disentanglement = np.sum(per_code * importance.sum(1) / importance.sum())
    per_factor = 1 - scipy.stats.entropy(importance + 1e-11, base=5)
    completeness = np.sum(per_factor * importance.sum(0) / importance.sum())
    ours = dci(codes, f, regressor="gbt")
    np.testing.assert_allclose(ours["importance"], importance)
    assert ours["disentanglement"] == pytest.approx(disentanglement, abs=1e-6)
    assert ours["completeness"] == pytest.approx(completeness, abs=1e-6)


def test_dci_rejects_an_unknown_regressor(factors):
    with pytest.raises(DataError, match="gbt, extra-trees"):
        dci(ideal(factors), factors, regressor="lasso")


def test_scores_report_every_metric_and_the_regressor(factors):
    scores = disentanglement_scores(ideal(factors)[:1000], factors[:1000], regressor="extra-trees")
    for key in ("mig", "dci_disentanglement", "beta_vae_score", "factor_vae_score", "sap", "modularity",
                "explicitness"):
        assert isinstance(scores[key], float), key
    assert scores["dci_regressor"] == "extra-trees" and len(METRICS) == 6
    only = disentanglement_scores(ideal(factors)[:1000], factors[:1000], metrics=("mig",))
    assert "dci_disentanglement" not in only and "mig" in only
    with pytest.raises(DataError, match="Unknown disentanglement metric"):
        disentanglement_scores(ideal(factors), factors, metrics=("irs",))


def test_report_encodes_with_the_vae(factors):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    x = torch.bernoulli(torch.full((300, 1, 8, 8), 0.3))
    report = disentanglement_report(vae, x, factors[:300], ["a", "b", "c", "d"], metrics=("mig", "sap"))
    assert set(report["per_factor"]) == {"a", "b", "c", "d"} and report["num_points"] == 300
