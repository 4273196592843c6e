"""``python -m maskcrypt`` is the ``maskcrypt`` command."""

from maskcrypt.cli.main import main

raise SystemExit(main())
