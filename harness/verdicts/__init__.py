"""Pure models and judgements: standard library only, no I/O, no guest."""
