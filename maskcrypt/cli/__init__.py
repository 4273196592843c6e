"""The front door: ``maskcrypt <command>`` (:mod:`.main`), one module per command group, the jobs' entry.

Nothing is imported here, so ``jobs/*.py`` can check the environment (:mod:`.environment`)
before numpy, torch or Ray are imported.
"""
