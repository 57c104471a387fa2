"""``python -m harness.cli``: the ``multidevs-harness`` command."""

from . import main

raise SystemExit(main())
