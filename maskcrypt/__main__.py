"""``python -m maskcrypt`` is the ``maskcrypt`` command."""

from maskcrypt.cli import main

raise SystemExit(main())
