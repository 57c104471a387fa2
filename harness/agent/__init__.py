"""The agent's wire protocol: the guest scripts and commands (``mdh-agent`` stat, read,
harm, ops; the witness script) and the parsers of their answers.  Pure: text in,
frozen data out; the SSH round trips are the check families'."""
