"""The selection test of `hfxray cv`: does a candidate recipe beat today's by at least a gain fixed in advance?

For each candidate, against the reference (today's recipe), over the same R x K patient-grouped folds:

* **The decision** is a one-sided Nadeau-Bengio corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert &
  Frank 2004) of H0: mean gain <= `min_gain` against H1: mean gain > `min_gain`, on the J = R x K per-fold
  differences. Folds share training images, so the variance of the mean difference is taken as
  (1/J + n_eval/n_train) x var(differences), not var/J. A loss can never pass (the test is one-sided).
* **The p-values are Holm-adjusted** across the candidates of one run (Holm 1979: step-down, controls the
  family-wise error rate), and a candidate passes when its adjusted p is below `alpha`.
* **A second interval**, the paired patient-level bootstrap over the pooled out-of-fold predictions (each image's
  correctness averaged over the R repeats, whole patients resampled), is reported beside it. It holds the trained
  models fixed, so it leaves out the run-to-run variation of training and is too narrow to decide on; it says how
  much of the gain the evaluation images alone could explain.

`min_gain` is fixed in the candidates file before the run (`min_gain: 0.01` beside the variants; 0 when absent).

Power of the design, by simulation (`simulate_design`; the generative model in its docstring): docs/evidence.md's
table, written to docs/results/evidence/selection_power.json by `python scripts/evidence_figures.py
selection-power` (figures are kept there, beside the command, not here). With no gain the test passes far less
often than alpha: in this model the folds' errors are nearly independent, while the correction's n_eval/n_train
term allows for the correlation shared training images can bring. The correction is a heuristic (Nadeau &
Bengio): conservative when the folds' correlation is below n_eval/n_train, not guaranteed above it.
`tests/test_selection.py` checks the false-pass rate and the detection of a planted gain at fewer simulations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m - i), running maximum,
    capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def corrected_t_test(differences: Sequence[float], n_train: float, n_evaluation: float, min_gain: float = 0.0,
                     alpha: float = ALPHA) -> dict[str, Any]:
    """One-sided Nadeau-Bengio corrected resampled t-test of mean(differences) > min_gain.

    Returns n, mean, sd, se (corrected), t, p (one-sided), lower_bound (the one-sided 1 - alpha bound of the mean
    gain) and ci95 (two-sided); t, p and the bounds are None with fewer than two differences or none spread.
    """
    d = np.asarray([x for x in differences if x is not None], dtype=float)
    j = len(d)
    entry: dict[str, Any] = dict(n=j, mean=float(d.mean()) if j else None,
                                 sd=float(d.std(ddof=1)) if j > 1 else None, min_gain=float(min_gain))
    if j < 2 or d.std(ddof=1) == 0:
        return dict(entry, se=None, t=None, p=None, lower_bound=None, ci95=[None, None])
    se = math.sqrt((1 / j + n_evaluation / n_train) * d.var(ddof=1))
    t = (d.mean() - min_gain) / se
    half = stats.t.ppf(0.975, j - 1) * se
    return dict(entry, se=se, t=float(t), p=float(stats.t.sf(t, j - 1)),
                lower_bound=float(d.mean() - stats.t.ppf(1 - alpha, j - 1) * se),
                ci95=[float(d.mean() - half), float(d.mean() + half)])


def paired_bootstrap(reference: Sequence[float], candidate: Sequence[float], groups: Sequence[Any],
                     min_gain: float = 0.0, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of candidate - reference per image (e.g. correctness averaged over repeats), with a percentile interval
    and a one-sided p (share of resamples at or below min_gain) from resampling whole patients."""
    from .intervals import group_weights

    ref, cand = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if ref.shape != cand.shape or len(ref) != len(groups) or not len(ref):
        raise ValueError(f"reference, candidate and groups differ in length: {len(ref)}, {len(cand)}, {len(groups)}")
    diff = cand - ref
    group_of = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    means = np.concatenate([(w @ diff) / w.sum(axis=1) for w in group_weights(group_of, n_resamples, seed)])
    low, high = np.quantile(means, [0.025, 0.975])
    return dict(mean=float(diff.mean()), ci95=[float(low), float(high)],
                p=float((1 + (means <= min_gain).sum()) / (1 + len(means))), n_images=int(len(diff)),
                n_patients=int(group_of.max()) + 1, n_resamples=int(n_resamples))


def decide(tests: Mapping[str, Mapping[str, Any]], alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Holm-adjust the candidates' one-sided p-values and state each decision.

    `tests` maps candidate names to `corrected_t_test` results; a candidate without a p (too few folds, or no
    spread) cannot pass and counts as p = 1 in the adjustment: it was tried, so it keeps its share of the family.
    """
    names = list(tests)
    adjusted = dict(zip(names, holm([1.0 if tests[n].get("p") is None else tests[n]["p"] for n in names])))
    decisions = {}
    for name, test in tests.items():
        p = adjusted[name] if test.get("p") is not None else None
        passed = p is not None and p < alpha
        if p is None:
            text = "no decision: fewer than two folds with a spread of differences"
        elif passed:
            text = (f"passes: gain {test['mean']:+.4f} > min_gain {test['min_gain']:g} (Holm-adjusted one-sided p "
                    f"{p:.3g} < {alpha:g})")
        else:
            text = (f"does not pass: gain {test['mean']:+.4f} not shown above min_gain {test['min_gain']:g} "
                    f"(Holm-adjusted one-sided p {p:.3g} >= {alpha:g})")
        decisions[name] = dict(p_holm=p, passes=passed, decision=text)
    return decisions


# --- over `hfxray cv`'s fold results -------------------------------------------------------------------------

def _correct_by_file(results: list[dict]) -> dict[str, float]:
    """Each pooled image's correctness (threshold 0.5), averaged over the repeats that held it out."""
    from .metrics import apply_temperature

    hits: dict[str, list[float]] = {}
    for r in results:
        probs = apply_temperature(np.asarray(r["logits"], dtype=float).reshape(-1, 2), 1.0)
        for name, label, p in zip(r["files"], r["labels"], probs):
            hits.setdefault(name, []).append(float(int(p >= 0.5) == label))
    return {name: float(np.mean(v)) for name, v in hits.items()}


def select(reference: list[dict], candidates: dict[str, list[dict]], rule: dict, groups_by_file: dict[str, str],
              n_train: float, n_evaluation: float) -> dict:
    """The selection test for every candidate against the reference over the same folds, and the decisions.

    `reference` and each candidate's list hold `hfxray cv`'s fold results (repeat, fold, metrics, files, labels,
    logits); `rule` is `hfxray.cv.selection_rule`'s; `groups_by_file` the patient group of each pooled image.
    """
    metric, by_key = rule["metric"], {(r["repeat"], r["fold"]): r for r in reference}
    tests, bootstraps = {}, {}
    reference_hits = _correct_by_file(reference)
    for name, results in candidates.items():
        pairs = [(by_key[(o["repeat"], o["fold"])], o) for o in results if (o["repeat"], o["fold"]) in by_key]
        differences = [o["metrics"][metric] - r["metrics"][metric] for r, o in pairs
                       if o["metrics"][metric] is not None and r["metrics"][metric] is not None]
        tests[name] = corrected_t_test(differences, n_train, n_evaluation, rule["min_gain"], rule["alpha"])
        if metric == "accuracy":
            hits = _correct_by_file(results)
            files = sorted(set(hits) & set(reference_hits))
            bootstraps[name] = paired_bootstrap([reference_hits[f] for f in files], [hits[f] for f in files],
                                                [groups_by_file.get(f, f) for f in files], rule["min_gain"])
    decisions = decide(tests, rule["alpha"])
    passing = [name for name in candidates if decisions[name]["passes"]]
    chosen = max(passing, key=lambda name: tests[name]["mean"]) if passing else None
    return dict(rule=dict(rule, test="one-sided Nadeau-Bengio corrected resampled t-test of the per-fold paired "
                                     "gain > min_gain, Holm-adjusted across the candidates"),
                candidates={name: dict(corrected_t=tests[name], patient_bootstrap=bootstraps.get(name),
                                       **decisions[name]) for name in candidates},
                chosen=chosen,
                outcome=(f"{chosen} replaces the reference (the passing candidate with the largest gain)" if chosen
                         else "no candidate passes: the reference stays"))


def _interval(bounds) -> str:
    return "–" if not bounds or None in bounds else f"{bounds[0]:+.3f} to {bounds[1]:+.3f}"


def selection_markdown(chosen: dict) -> list[str]:
    """The selection test's table: each candidate's gain, intervals, p-values and decision."""
    rule = chosen["rule"]
    lines = ["", f"Selection test (rule fixed in {rule['fixed_in']}): Δ {rule['metric']} > min_gain "
             f"{rule['min_gain']:g}, one-sided corrected resampled t-test over the paired folds, Holm-adjusted across "
             f"{len(chosen['candidates'])} candidate(s), family-wise alpha {rule['alpha']:g}:", "",
             f"| candidate | Δ {rule['metric']} (folds) | corrected 95% CI | one-sided lower bound | p | Holm p | "
             "patient bootstrap Δ (95% CI) | decision |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in chosen["candidates"].items():
        test, boot = entry["corrected_t"], entry["patient_bootstrap"]
        fmt = (lambda v, spec: "–" if v is None else format(v, spec))
        boot_text = "–" if not boot else f"{boot['mean']:+.3f} ({_interval(boot['ci95'])})"
        lines.append(f"| {name} | {fmt(test['mean'], '+.3f')} ({test['n']}) | {_interval(test['ci95'])} | "
                     f"{fmt(test['lower_bound'], '+.3f')} | {fmt(test['p'], '.3g')} | {fmt(entry['p_holm'], '.3g')} | "
                     f"{boot_text} | {'passes' if entry['passes'] else 'does not pass'} |")
    lines += ["", f"Outcome: {chosen['outcome']}. The patient bootstrap holds the trained models fixed (it leaves out "
              "training's run-to-run variation), so it is shown, not decided on."]
    return lines


# --- the design's power ------------------------------------------------------------------------------------------

def simulate_design(n_images: int = 1750, n_folds: int = 5, repeats: int = 2, gain: float = 0.015,
                    min_gain: float = 0.0, base_accuracy: float = 0.94, spread: float = 4.0, model_sd: float = 0.3,
                    simulations: int = 200, alpha: float = ALPHA, seed: int = 0) -> float:
    """Share of simulated CV runs in which a candidate passes `corrected_t_test` at one-sided `alpha`.

    Generative model: image i has a logit a_i ~ N(mu, spread) of being classified right by today's recipe (mu set
    so the mean accuracy is `base_accuracy`); the candidate's logit is a_i + delta, delta set so its mean accuracy
    is `gain` higher. Every trained model (one per variant, repeat and fold) adds its own shift ~ N(0, model_sd) to
    the logits of all its images (what the training images and seed change) and then draws each image's
    correctness independently. Folds are K equal parts of a fresh shuffle per repeat. The defaults (spread 4,
    model_sd 0.3) give what the 522-image sample's CV showed: paired fold differences of sd about 0.02 on
    104-image folds, and a few percent of the images wrong in nearly every run.
    """
    rng = np.random.default_rng(seed)

    def mean_accuracy(shift: float, draws: np.ndarray) -> float:
        return float((1 / (1 + np.exp(-(draws + shift)))).mean())

    grid = rng.normal(0.0, spread, 200_000)
    mu = _solve(lambda m: mean_accuracy(m, grid) - base_accuracy)
    delta = _solve(lambda d: mean_accuracy(mu + d, grid) - base_accuracy - gain) if gain else 0.0
    passes = 0
    for _ in range(simulations):
        logit = rng.normal(mu, spread, n_images)
        differences = []
        for _ in range(repeats):
            folds = np.array_split(rng.permutation(n_images), n_folds)
            for fold in folds:
                scores = []
                for extra in (0.0, delta):
                    model_shift = rng.normal(0.0, model_sd)
                    p = 1 / (1 + np.exp(-(logit[fold] + extra + model_shift)))
                    scores.append((rng.random(len(fold)) < p).mean())
                differences.append(scores[1] - scores[0])
        test = corrected_t_test(differences, n_train=n_images * (n_folds - 1) / n_folds,
                                n_evaluation=n_images / n_folds, min_gain=min_gain, alpha=alpha)
        passes += test["p"] is not None and test["p"] < alpha
    return passes / simulations


def _solve(function, low: float = -10.0, high: float = 10.0) -> float:
    from scipy.optimize import brentq

    return float(brentq(function, low, high))
