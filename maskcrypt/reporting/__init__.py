"""What a run shows: pictures (:mod:`.pictures`) and ``report.md`` (:mod:`.report`)."""
