"""The one-guest commands beside the main job: ``exec``, ``reproduce`` and the by-hand
reproduction script."""
