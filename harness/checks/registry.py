"""The check-family registry: ``Check`` names to families, one list.  The run loop looks
families up here and nowhere else."""

from __future__ import annotations

from typing import Any

from ..config import Check
from .family import CheckFamily, Judging
from .held import HeldFdCheck
from .ids import IdsCheck
from .live import BindCheck, RemountCheck, RuntimeMountCheck
from .ops import CrossDeviceCheck, OperationsCheck

__all__ = ["FAMILIES", "CheckFamily", "IdsCheck", "Judging"]


# Each family is typed by its own record; the run loop only hands a family's record
# back to the same family (see ``pool.Observed``), so the registry holds them as Any.
FAMILIES: dict[Check, CheckFamily[Any]] = {
    family.name: family for family in (
        IdsCheck(), OperationsCheck(), CrossDeviceCheck(), RuntimeMountCheck(), HeldFdCheck(),
        BindCheck(), RemountCheck())}
# Every Check has its family: a Check without one would be accepted by --checks and
# then fail at run time.
assert set(FAMILIES) == set(Check), "checks.registry: a Check without a family"
