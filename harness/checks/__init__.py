"""The check families: what is observed of one export while its guest runs, and how
it is judged.  ``registry`` maps each ``config.Check`` to its family."""
