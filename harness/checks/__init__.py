"""Check families: what is observed of one export while its guest runs, and how it is judged.

A family is one kind of question asked of an export: ``ids`` (guest ids, QEMU's
messages, the harm of colliding ids, the witnesses), operations, cross-device moves,
runtime mounts, binds, remounts.  The run loop (``pool``) is the same for all of them:
it builds the export, boots the guest, calls the family's ``observe`` while the guest
runs (each export in turn, noting QEMU's stderr meanwhile), shuts the guest down, then
calls ``judge`` with everything QEMU printed.  A family adds a module of its own (or a
class in one) and one entry in ``registry``; the loop does not change.  The family
class declares its ``rules`` (``plan.FamilyRules``: where its exports go, the modes,
cache modes and transports it runs on, whether it writes or mounts after start), which
the planner reads from the registry, and its verdict renders its own JSON details
(``Verdict.details``).  Each family is sliced over three wings under one file name,
each saying its side in its first line: the guest script (``agent``), the SSH round
trip (here) and the pure judgement (``verdicts``).
"""
