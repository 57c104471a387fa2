"""``python -m harness.bench`` (what ``scripts/bench`` runs)."""

from .figures import main

raise SystemExit(main())
