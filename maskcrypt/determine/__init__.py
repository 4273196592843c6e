"""The determination: Table 1, the per-mask ranking (full or raced, :mod:`.race`), the attackers
(:mod:`.attackers`), the decision (:mod:`.stage`)."""
