"""Intervals over people and the leak guards: pure functions, no Ray, no model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import (
    IDC,
    IDN,
    clustered_wilson,
    design_effect,
    encode_counts,
    wilson_interval,
)


def test_clustered_interval_covers_where_plain_wilson_does_not():
    """Simulated clustered data: 40 identities of 4 images, identities that differ in difficulty (a Beta with
    intra-identity correlation 0.3 around 70%), 400 seeded repetitions. The truth is the mean over people. At a
    nominal 95% the design-effect interval covers at least 93%; plain Wilson, treating photos as independent
    draws, covers at most 90%."""
    rng = np.random.default_rng(2026)
    mean, rho, people, photos, reps = 0.7, 0.3, 40, 4, 400
    spread = (1 - rho) / rho
    plain = clustered = 0
    for _ in range(reps):
        p = rng.beta(mean * spread, (1 - mean) * spread, people)
        right = rng.binomial(photos, p)
        n = np.full(people, photos)
        lo, hi = wilson_interval(right.sum(), n.sum())
        plain += bool(lo <= mean <= hi)
        deff = design_effect(right, right, n)
        lo, hi = clustered_wilson(right.sum(), n.sum(), deff, people)
        clustered += bool(lo <= mean <= hi)
    assert clustered / reps >= 0.93, clustered / reps
    assert plain / reps <= 0.90, plain / reps


def test_design_effect_limits():
    """One image per identity, or a figure of 0% or 100%: no inflation; identities all right or all wrong: the
    cluster size (every photo of a person says the same)."""
    assert design_effect([1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]) == 1.0
    assert design_effect([0, 0, 0], [0, 0, 0], [4, 4, 4]) == 1.0
    assert design_effect([4, 4, 4], [4, 4, 4], [4, 4, 4]) == 1.0
    right = np.array([4, 0] * 10)
    assert design_effect(right, right, np.full(20, 4)) == pytest.approx(4.0)
    # Within-identity variation only: no correlation, floored at 1.
    right = np.full(20, 2)
    assert design_effect(right, right, np.full(20, 4)) == 1.0
    # The clustered interval widens with deff and equals Wilson's (bar the t quantile) at deff 1.
    lo1, hi1 = clustered_wilson(50, 100, 1.0, 10_000)
    lo, hi = wilson_interval(50, 100)
    assert lo1 == pytest.approx(lo, abs=1e-3) and hi1 == pytest.approx(hi, abs=1e-3)
    lo4, hi4 = clustered_wilson(50, 100, 4.0, 25)
    assert hi4 - lo4 > 1.9 * (hi - lo)
    # 0% stays an interval, not a point.
    lo0, hi0 = clustered_wilson(0, 100, 1.0, 25)
    assert lo0 == 0.0 and hi0 > 0.02


def test_attack_table_carries_intervals_over_people():
    """With per-identity counts the attack and ladder rows get deff, identities and wider intervals."""
    from maskcrypt.selection.attacks import attacks_table
    from maskcrypt.selection.ladder import ladder_table

    per = np.array([4, 0] * 10)  # 20 identities of 4 probes: all right or all wrong
    counts = pd.DataFrame({"mask_id": ["m"], "split": ["selection"], "n": [80], "both": [40], "before_only": [0],
                           "after_only": [0], "neither": [40], "correct_O_masked": [40],
                           "correct_O_inpainted": [40], IDN: [encode_counts(np.full(20, 4))],
                           IDC + "correct_O_masked": [encode_counts(per)]})
    ranks = pd.DataFrame({"mask_id": ["m"], "bucket": [3]})
    table = attacks_table(counts, ranks)
    o = table[table["attacker"] == "O"].iloc[0]
    r = table[table["attacker"] == "R+O"].iloc[0]  # no per-identity counts given: per image
    assert o["identities"] == 20 and o["deff"] == pytest.approx(4.0)
    assert np.isnan(r["deff"]) and o["accuracy"] == r["accuracy"]
    assert (o["accuracy_hi"] - o["accuracy_lo"]) > 1.9 * (r["accuracy_hi"] - r["accuracy_lo"])
    ladder = ladder_table(counts, ranks, {0: "correct_O_masked"})
    assert ladder["deff"].iloc[0] == pytest.approx(4.0)
    assert ladder["accuracy_lo"].iloc[0] == pytest.approx(o["accuracy_lo"])


def test_open_set_table2_and_per_mask_intervals_over_people():
    """Open set: Table 2's accuracies and drop and the per-mask figures use the per-identity counts; closed set
    (by_identity off) keeps the per-image interval on the same counts."""
    from maskcrypt.selection.rules import per_mask_table, table2

    k = 20
    n = np.full(k, 4)
    before = np.array([4, 0] * 10)  # recognized before inpainting: half the people, every photo
    none = encode_counts(np.zeros(k))
    attack = pd.DataFrame({"mask_id": ["m"], "n": [80], "both": [0], "before_only": [40], "after_only": [0],
                           "neither": [40], IDN: [encode_counts(n)], IDC + "both": [none],
                           IDC + "before_only": [encode_counts(before)], IDC + "after_only": [none]})
    ranks = pd.DataFrame({"mask_id": ["m"], "bucket": [2], "rank": [1]})
    people, images = table2(attack, ranks, by_identity=True).iloc[0], table2(attack, ranks).iloc[0]
    assert people["fourth"] == images["fourth"] == 0.5
    assert people["fourth_hi"] - people["fourth_lo"] > 1.9 * (images["fourth_hi"] - images["fourth_lo"])
    assert people["drop_hi"] - people["drop_lo"] > 1.5 * (images["drop_hi"] - images["drop_lo"])
    assert not any(c.startswith(IDC) or c == IDN for c in table2(attack, ranks, by_identity=True).columns)
    counts = pd.DataFrame({"mask_id": ["m", "p"], "bucket": [2, 2], "n": [80, 40], "correct_E": [40, 20],
                           "correct_O": [40, np.nan], IDN: [encode_counts(n), None],
                           IDC + "correct_E": [encode_counts(before), None],
                           IDC + "correct_O": [encode_counts(before), None]})
    pm = per_mask_table(counts, by_identity=True).set_index("mask_id")
    assert pm.loc["m", "third_deff"] == pytest.approx(4.0) and np.isnan(pm.loc["p", "third_deff"])
    assert np.isnan(pm.loc["p", "acc_O_lo"])  # the race's partial mask: no O figure, no O interval


def test_linkage_recall_interval_and_verification_subject_intervals():
    """Recall@1 gets an interval over the victims around it; verify's accuracy and TAR@FAR get intervals over
    subjects that hold the figure."""
    from maskcrypt.verification.linkage import linkage_figures
    from maskcrypt.verification.protocol import evaluate

    rng = np.random.default_rng(1)
    victims, per = 12, 3
    centres = rng.normal(size=(victims, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    probe_labels = np.repeat(np.arange(victims), per)
    probes = centres[probe_labels] + rng.normal(scale=0.9, size=(victims * per, 16))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    out = linkage_figures(probes, probe_labels, centres, np.arange(victims))
    assert out["recall_at_1_lo"] <= out["recall_at_1"] <= out["recall_at_1_hi"]
    assert out["victims"] == victims and out["deff"] >= 1.0

    pairs = 600
    subjects = rng.integers(0, 60, pairs)
    same = np.arange(pairs) % 2 == 0
    sims = np.where(same, 0.6, 0.2) + rng.normal(scale=0.2, size=pairs) + 0.15 * (subjects % 3)
    folds = np.arange(pairs) % 10
    figures = evaluate(sims, same, folds, subjects=subjects)
    assert figures["accuracy_lo"] <= figures["accuracy"] <= figures["accuracy_hi"]
    assert figures["subjects"] == 60
    for key in ("tar_far_1e-3", "tar_far_1e-4"):
        assert 0.0 <= figures[key + "_lo"] <= figures[key + "_hi"] <= 1.0
    assert "accuracy_lo" not in evaluate(sims, same, folds)


def test_attacker_weights_equal_to_a_run_model_are_refused_by_name(tmp_path):
    """The run's own model (any model.pt under RUN/models/) given as public weights is refused, naming it."""
    from maskcrypt.determine.guards import check_attacker_weights

    own = tmp_path / "models" / "original" / "epoch-0003" / "model.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"O's weights")
    copy = tmp_path / "public.pt"
    copy.write_bytes(b"O's weights")
    with pytest.raises(MaskcryptError, match=r"public\.pt: the same file .* own model .*original/epoch-0003/model\.pt"):
        check_attacker_weights(str(copy), tmp_path / "models")
    other = tmp_path / "other.pt"
    other.write_bytes(b"weights from elsewhere")
    assert check_attacker_weights(str(other), tmp_path / "models")["file"].endswith("other.pt")


def test_attacker_data_overlapping_the_test_images_is_refused_with_a_count():
    """Content digests: the same synthetic images named twice are caught with a count; a training split and a
    test split of one source share nothing; array sources compare by pixels."""
    from maskcrypt.data import SourceSplit, source_split
    from maskcrypt.determine.guards import check_attacker_overlap

    spec = "synthetic:identities=6,per_identity=10#size=16"
    test = source_split(spec, default_split="test").item_digests()
    train = source_split(spec, default_split="train").item_digests()
    same = {"spec": spec + "#split=test", "digests": source_split(spec, default_split="test").item_digests()}
    with pytest.raises(MaskcryptError, match=rf"{len(test)} of its {len(test)} images are also test images"):
        check_attacker_overlap(same, test, spec)
    assert "no shared image" in check_attacker_overlap({"spec": spec, "digests": train}, test, spec)
    pixels = np.random.default_rng(0).integers(0, 255, (5, 3, 8, 8), dtype=np.uint8)
    a = SourceSplit.from_arrays(pixels, np.arange(5), [str(i) for i in range(5)]).item_digests()
    b = SourceSplit.from_arrays(pixels[3:], np.arange(2), ["3", "4"]).item_digests()
    with pytest.raises(MaskcryptError, match=r"2 of its 5 images"):
        check_attacker_overlap({"spec": "npz:a", "digests": a}, b, "npz:b")
