"""Leak guards of the privacy figures: what the attackers start from and train on, checked by content.

An attacker's figure means something only if the attacker never saw what it is scored
on. These checks refuse the two ways that happens by accident: the run's own model given
as the linkage embedder's "public" weights, and attacker photos that are test images. They
are guards, not proofs: a re-encoded copy of an image, a model saved another way, or
public face weights trained on the victims' photos pass them (the report says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import sha256_file
from maskcrypt.data.identity import content_overlap


def check_attacker_weights(weights: str, models: Path) -> dict[str, str]:
    """``--attacker-weights``: a file that is none of the run's own models; its path and sha256 for the record.

    The linkage embedder must not have seen the victims. The run's models did (O and E
    trained on the operator's photos; R, the attackers on theirs), so weights whose
    sha256 equals any ``model.pt`` under ``RUN/models/`` are refused by name. A guard, not
    a proof: public face weights may have seen the victims too (the report says so), and
    a copy saved another way has another sha256.
    """
    path = Path(weights)
    if not path.is_file():
        raise MaskcryptError(f"--attacker-weights {weights}: no such file (the public face weights the linkage "
                             "embedder starts from; leave it empty for random initialisation)")
    digest = sha256_file(path)
    for own in sorted(models.rglob("model.pt")):
        if sha256_file(own) == digest:
            raise MaskcryptError(f"--attacker-weights {weights}: the same file (sha256 {digest[:12]}...) as this run's "
                                 f"own model {own}, which was trained on the operator's photos and may have seen the "
                                 "victims; the linkage embedder needs weights trained on other people (or none: "
                                 "random initialisation)")
    return {"file": str(path.resolve()), "sha256": digest}


def check_attacker_overlap(data: dict[str, Any], test_digests: Any, test_spec: str) -> str:
    """Refuse attacker data that shares an image with the test data (by content); what was compared, for the record.

    Attackers scored on the images they trained on would overstate what an attacker
    recognizes. Compared by content digest (:meth:`maskcrypt.data.SourceSplit.item_digests`),
    so a copy of the test folder under another name is caught; a re-encoded or resized
    copy is not.
    """
    mine = data.get("digests")
    if mine is None or test_digests is None:
        return "not compared: a source without per-image content digests"
    count, example = content_overlap(mine, test_digests)
    if count:
        raise MaskcryptError(f"--attacker-data {data['spec']}: {count} of its {len(mine)} images are also test "
                             f"images of {test_spec} (same content; e.g. digest {example[:24]}); the attackers would "
                             "be scored on photos they trained on: give attacker data disjoint from the test data")
    return f"no shared image among {len(mine)} attacker and {len(test_digests)} test images (content digests)"
