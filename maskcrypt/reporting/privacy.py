"""The report's privacy sections beyond the worst attacker: the attacker ladder and (later) linkage.

Each section reads its own table under ``results/`` and is absent when the table is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from maskcrypt.reporting.markdown import md_table
from maskcrypt.reporting.pictures import plot_ladder


def _pct(row: Any) -> str:
    return f"{100 * row['accuracy']:.1f} [{100 * row['accuracy_lo']:.1f}, {100 * row['accuracy_hi']:.1f}]"


def ladder_section(res: Path, result: dict[str, Any], shown: list[str], labels: dict[int, str]) -> list[str]:
    """"What an attacker gets with N photos": per shown mask and split, the accuracy of every rung."""
    path = res / "attacker_ladder.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    shown = [m for m in shown if m in set(table["mask_id"])] or list(dict.fromkeys(table["mask_id"]))[:3]
    info = (result.get("attack") or {}).get("ladder") or {}
    photos = sorted(table["photos"].unique())
    rows = []
    for mid in shown:
        mine = table[table["mask_id"] == mid]
        for split in ("selection", "confirmation"):
            part = mine[mine["split"] == split].set_index("photos")
            if part.empty:
                continue
            rows.append([f"`{mid}`", labels.get(int(mine["bucket"].iloc[0]), ""), split,
                         *[_pct(part.loc[p]) if p in part.index else "" for p in photos]])
    plot_ladder(table, shown, res / "attacker_ladder.png", labels)
    total = int(info.get("photos_total") or 0)
    return ["", "## What an attacker gets with N photos", "",
            "The family attacker (O fine-tuned under fresh masks of the target buckets, the mask itself unknown) "
            "trained on N of its labelled photos, for each N of the ladder; 0 is O itself. Every rung starts from "
            "O's weights (the attacker holds O: the worst case) and takes the same number of optimizer steps; the "
            f"photos are drawn stratified per identity, seeded and nested (of {total:,} photos of "
            f"{info.get('identities')} identities). Identification accuracy in % with its interval over the test "
            f"identities; chance {100 * float(table['chance'].iloc[0]):.2f}%. All attacked masks: "
            "`results/attacker_ladder.parquet`.", "",
            "*What it measures:* how fast an attacker who already holds O adapts to the masks with N labelled "
            "photos. *What it does not:* how many photos a stranger must collect"
            + (": in closed set O already trained on clean photos of every scored person, so even rung 0 knows them."
               if result.get("scoring") != "open" else
               ": O was trained on other people here, but it still hands every rung a strong face embedder."), "",
            "![attacker ladder](results/attacker_ladder.png)", "",
            md_table(["mask", "bucket", "split", *[f"{p} photos" for p in photos]], rows)]


def _fraction(v: Any) -> str:
    return "" if pd.isna(v) else f"{100 * float(v):.1f}"


def linkage_section(res: Path, result: dict[str, Any], shown: list[str], labels: dict[int, str]) -> list[str]:
    """"Linkage of identities the attacker never saw": per shown mask and split, each model's Recall@1 and TAR."""
    info = (result.get("attack") or {}).get("linkage") or {}
    head = ["", "## Linkage of identities the attacker never saw", ""]
    if info.get("skipped"):
        return [*head, f"Not measured on this run: {info['skipped']}."]
    path = res / "linkage.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    shown = [m for m in shown if m in set(table["mask_id"])] or list(dict.fromkeys(table["mask_id"]))[:3]
    rows = []
    for r in table[table["mask_id"].isin(shown)].to_dict("records"):
        rows.append([f"`{r['mask_id']}`", labels.get(int(r["bucket"]), ""), r["split"], r["model"],
                     f"{_fraction(r['recall_at_1'])}"
                     + (f" [{_fraction(r['recall_at_1_lo'])}, {_fraction(r['recall_at_1_hi'])}]"
                        if "recall_at_1_lo" in r else "") + f" (chance {_fraction(r['recall_at_1_chance'])})",
                     _fraction(r["tar_at_far_1e-2"]), _fraction(r["tar_at_far_1e-3"]), r["n_probes"], r["n_gallery"],
                     f"{int(r['impostor_pairs']):,}"])
    init = info.get("init", "random")
    guards = []
    if init != "random":
        guards.append(f"The embedder's initial weights `{init}` (sha256 {str(info.get('init_sha256'))[:12]}...) are "
                      "none of this run's models (checked by sha256); public face weights may still have been "
                      "trained on photos of the victims, which would overstate this attacker.")
    if info.get("name_exclusion"):
        guards.append(f"Victims could not be excluded by name: {info['name_exclusion']}.")
    return [*head,
            f"A realistic adversary trains on photos of other people and links a victim's masked uploads to a clean "
            f"photo of the victim found elsewhere. The test identities are split (seeded) into "
            f"{len(info.get('victims', []))} victims and the others; the attacker's embedder starts from "
            f"{'random weights' if init == 'random' else f'`{init}`'} and trains with the family recipe (fresh masks "
            f"of the target buckets) for {info.get('epochs')} epoch(s) on {info.get('photos', 0):,} photos of "
            f"{info.get('attacker_identities')} identities, none of them a victim. Each victim's masked probes are "
            "matched against a clean gallery of the victims (other photos): Recall@1 (1:N identification, its "
            "chance 1 / the victims) and TAR at FAR 1e-2 and 1e-3 of masked-probe-vs-clean-photo verification, in "
            "%. A TAR is left empty where the impostor pairs number fewer than 10 / FAR (too few to resolve that "
            "FAR). Recall@1's interval (in brackets) is over the victims: their probes clustered by person, the "
            "gallery fixed. O and E are reference rows under the same protocol, not attackers and not bounds: they "
            "trained on the operator's photos (in closed set, of the victims too), and O, which never saw a mask, "
            "links fewer victims than the outsider. All attacked masks: `results/linkage.parquet`.", "",
            "*What it measures:* whether a masked upload can be tied to a clean photo of the same person by someone "
            "who never had the operator's data. *What it does not:* an outsider with a pretrained face model of "
            "real strength (give `--attacker-weights`), or linkage across two masks.", "", *guards,
            md_table(["mask", "bucket", "split", "model", "Recall@1", "TAR@FAR 1e-2", "TAR@FAR 1e-3", "probes",
                      "gallery", "impostor pairs"], rows)]


def unlinkability_section(res: Path, result: dict[str, Any]) -> list[str]:
    """"Unlinkability across masks": D_sys per model over the pairs of target masks, and the worst pair's curve."""
    info = result.get("unlinkability") or {}
    head = ["", "## Unlinkability across masks", ""]
    if info.get("skipped"):
        return [*head, f"Not measured on this run: {info['skipped']}."]
    path = res / "unlinkability.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    rows = []
    for (model, split), part in table.groupby(["model", "split"], sort=False):
        worst = part.loc[part["d_sys"].idxmax()]
        rows.append([model, split, len(part), f"{part['d_sys'].median():.3f}", f"{part['d_sys'].min():.3f}",
                     f"{worst['d_sys']:.3f} (`{worst['mask_a']}` vs `{worst['mask_b']}`)",
                     f"{int(part['mated_pairs'].median()):,}", f"{int(part['non_mated_pairs'].median()):,}"])
    return [*head,
            "Can one person's images under one mask (a service, or a mask before it was reissued) be linked to the "
            "same person's images under another? For every pair of target masks, each probe under mask A is "
            "compared with the same person's other probes under mask B (mated scores; a photo is never compared "
            "with itself, since both masks keep some of its pixels) and with other people's (non-mated), by cosine "
            "similarity; D_sys (Gomez-Barrero et al., IEEE TIFS 2018, prior ratio 1, histogram densities of 100 "
            "bins normalized separately) is 0 when a score says nothing about whether two images are of one person "
            "and 1 when it always does. `E` is the operator's recognizer (the worst case: trained to see through "
            "every mask); `linkage` the outsider's embedder, on its victims only. *What it measures:* linkability "
            "of the chosen masks against each other by these models. *What it does not:* linkage to clean photos "
            "(the section above) or by a model trained for it. All pairs: `results/unlinkability.parquet`.", "",
            f"![unlinkability](results/{path.with_suffix('.png').name})", "",
            md_table(["model", "split", "pairs", "median D_sys", "lowest", "highest (pair)", "mated pairs",
                      "non-mated pairs"], rows)]
