"""The agent's operations protocol: NUL-safe requests, strict parsing of the answers."""

from __future__ import annotations

import re

import pytest

from harness.agent.ops import OpRequest, encode_requests, ops_command, parse_ops_output
from harness.errors import GuestOutputError

REQUESTS = [OpRequest("stat", "dev01/odd\nname"), OpRequest("readdir", "."),
            OpRequest("rename", "a b", "dev01/a b")]


def test_requests_are_nul_separated_triples_so_any_name_passes() -> None:
    assert encode_requests(REQUESTS) == (
        b"stat\0dev01/odd\nname\0\0readdir\0.\0\0rename\0a b\0dev01/a b\0")
    assert ops_command("/mnt/mdh 0") == "mdh-agent ops '/mnt/mdh 0'"


@pytest.mark.parametrize(("request_", "refusal"), [
    # unknown: the agent would exit without END
    (OpRequest("chown", "x"), "unknown agent operation 'chown'"),
    # absolute: escapes the export
    (OpRequest("stat", "/etc/passwd"),
     "agent path must be relative, NUL-free, non-empty: '/etc/passwd'"),
    (OpRequest("stat", ""), "agent path must be relative, NUL-free, non-empty: ''"),
    (OpRequest("stat", "a\0b"), "agent path must be relative, NUL-free, non-empty: 'a\\x00b'"),
    # rename needs its destination
    (OpRequest("rename", "a"), "rename takes two paths: OpRequest("),
    # and unlink takes none
    (OpRequest("unlink", "a", "b"), "unlink takes one path: OpRequest("),
])
def test_requests_the_agent_could_not_answer_are_refused(request_: OpRequest,
                                                         refusal: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(refusal)):
        encode_requests([request_])


def test_answers_parse_by_index_with_readdir_names() -> None:
    text = "O 0 19\nL 1 6465763031\nL 1 6f64640a6e616d65\nO 1 0\nO 2 18\nEND 3\n"
    answer = parse_ops_output(text, REQUESTS)
    assert answer.errnos == (19, 0, 18)
    assert answer.listings == {1: ("dev01", "odd\nname")}


@pytest.mark.parametrize(("text", "complaint"), [
    ("O 0 0\nO 1 0\nEND 3\n", "END after 2 of 3"),
    ("O 0 0\nO 1 0\nO 2 0\n", "without an END"),
    ("", "empty"),
    ("O 1 0\nO 0 0\nO 2 0\nEND 3\n", "answer for request 1 but 0 is next"),
    ("O 0 0\nO 0 0\nO 1 0\nO 2 0\nEND 3\n", "after its O record"),
    ("L 0 61\nO 0 0\nO 1 0\nO 2 0\nEND 3\n", "L record for request 0, a stat"),
    ("O 0 0\nL 1 2e2e\nO 1 0\nO 2 0\nEND 3\n", "invalid directory entry name"),
    ("O 0 0\nL 1 6G\nO 1 0\nO 2 0\nEND 3\n", "not lowercase hex"),
    ("O 0 0\nO 1 0\nO 2 018\nEND 3\n", "not a decimal"),
    ("O 0 0\nO 1 0\nO 3 0\nEND 3\n", "out of range"),
    ("O 0 0\nO 1 0\nO 2 0\nEND 4\n", "request count 3"),
    ("O 0 0\nO 1 0\nO 2 0\nEND 3\nO 0 0\n", "continues after END"),
    ("O 0 0\nX 1 0\nO 2 0\nEND 3\n", "expected 'L i HEX'"),
])
def test_every_protocol_deviation_is_an_error_naming_it(text: str, complaint: str) -> None:
    # The complaint is in the message's own line, not in its hint.
    with pytest.raises(GuestOutputError, match=r"^agent (ops output|output line \d+)\b.*"
                       + re.escape(complaint)) as caught:
        parse_ops_output(text, REQUESTS)
    assert complaint in str(caught.value)
