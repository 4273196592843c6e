"""Verification in the field's protocol: the pure protocol (:mod:`.protocol`) and the stage that embeds
pairs on Ray (:mod:`.stage`)."""
