"""The check-family registry: ``Check`` names to families, one list.  The run loop looks
families up here and nowhere else."""

from __future__ import annotations

from .family import CheckFamily, Judging, Observation
from .ids import IdsCheck
from .live import LIVE_FAMILIES
from .ops import OPS_FAMILIES

__all__ = ["FAMILIES", "CheckFamily", "IdsCheck", "Judging", "Observation"]


FAMILIES: dict[str, CheckFamily] = {
    family.name: family for family in (IdsCheck(), *OPS_FAMILIES, *LIVE_FAMILIES)}
