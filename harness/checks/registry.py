"""The check-family registry: ``Check`` names to families, one list.  The run loop looks
families up here and nowhere else, and the planner reads each family's ``rules`` from
``RULES``: adding a family is its modules and one entry in the list below."""

from __future__ import annotations

from typing import Any

from ..config import Check
from ..plan import FamilyRules
from .family import CheckFamily, Judging
from .held import HeldFdCheck
from .ids import IdsCheck
from .live import BindCheck, RemountCheck, RuntimeMountCheck
from .ops import CrossDeviceCheck, OperationsCheck

__all__ = ["FAMILIES", "RULES", "CheckFamily", "IdsCheck", "Judging", "registry", "rules_of"]


def registry(*families: CheckFamily[Any]) -> dict[Check, CheckFamily[Any]]:
    """``families`` by name, in the order given (the report's); two families of one
    name would leave one of them unreachable, so that is refused here."""
    named: dict[Check, CheckFamily[Any]] = {}
    for family in families:
        if family.rules.name in named:
            raise ValueError(f"checks.registry: two families named {family.rules.name}")
        named[family.rules.name] = family
    return named


def rules_of(families: dict[Check, CheckFamily[Any]]) -> tuple[FamilyRules, ...]:
    """What the planner reads of each family, in the registry's order."""
    return tuple(family.rules for family in families.values())


# Each family is typed by its own record; the run loop only hands a family's record
# back to the same family (see ``pool.Observed``), so the registry holds them as Any.
FAMILIES: dict[Check, CheckFamily[Any]] = registry(
    IdsCheck(), OperationsCheck(), CrossDeviceCheck(), RuntimeMountCheck(), HeldFdCheck(),
    BindCheck(), RemountCheck())
RULES = rules_of(FAMILIES)
# Every Check has its family: a Check without one would be accepted by --checks and
# then fail at run time.
assert set(FAMILIES) == set(Check), "checks.registry: a Check without a family"
