"""The agent's input encoding and the strict parsers of its two output protocols."""

from __future__ import annotations

import pytest

from harness.agent.collect import parse_collection
from harness.agent.stat import (
    READ_LIMIT,
    GuestStat,
    encode_paths,
    parse_read_output,
    parse_stat_output,
)
from harness.errors import GuestOutputError

PATHS = (".", "a b", "odd\nname", "sub", "sub/x")
DIR = 0o040755
FILE = 0o100644
ODD_HEX = b"odd\nname".hex()

# Two passes over PATHS; "sub/x" fails in both; "." and "sub" are listed after pass 1.
STAT_OK = (
    f"S 1 0 45 2 3 {DIR}\n"
    f"S 1 1 45 3 1 {FILE}\n"
    f"S 1 2 45 4 1 {FILE}\n"
    f"S 1 3 45 5 2 {DIR}\n"
    "E 1 4 2\n"
    f"D 0 3 {b'a b'.hex()}\n"
    f"D 0 4 {ODD_HEX}\n"
    f"D 0 5 {b'sub'.hex()}\n"
    "DE 3 13\n"
    f"S 2 0 45 2 3 {DIR}\n"
    f"S 2 1 45 3 1 {FILE}\n"
    f"S 2 2 45 4 1 {FILE}\n"
    f"S 2 3 45 5 2 {DIR}\n"
    "E 2 4 2\n"
    "END 5\n"
)


def _error(text: str, paths: tuple[str, ...] = PATHS, passes: int | None = None) -> str:
    # A break of the agent's line protocol; the callers pin the whole message.
    with pytest.raises(GuestOutputError, match=r"^agent output (is empty|line \d+): ") as info:
        parse_stat_output(text, paths, passes=passes)
    return info.value.message


def test_encode_paths_terminates_each_path_with_nul() -> None:
    assert encode_paths(PATHS) == b".\0a b\0odd\nname\0sub\0sub/x\0"
    assert encode_paths([]) == b""


@pytest.mark.parametrize("bad", ["", "/etc", "a\0b"])
def test_encode_paths_rejects_what_the_agent_cannot_resolve(bad: str) -> None:
    with pytest.raises(ValueError, match="relative, non-empty, NUL-free"):
        encode_paths([".", bad])


def _collection(stat: str) -> str:
    return f"@@STAT\n{stat}@@DMESG\n[ 1.0] 9p: x\n@@DONE\n"


def test_parse_collection_splits_every_section() -> None:
    view = parse_collection(_collection(STAT_OK), PATHS, passes=2)
    assert len(view.observation.passes) == 2
    assert view.dmesg == "[ 1.0] 9p: x\n" and view.harm is None


def test_parse_collection_refuses_a_lost_second_pass() -> None:
    # One pass where two were asked for: "stable on a second look" would pass on one.
    one_pass = STAT_OK.split("S 2 0")[0] + "END 5\n"
    with pytest.raises(GuestOutputError, match="pass 2 answered 0 of 5 paths"):
        parse_collection(_collection(one_pass), PATHS, passes=2)


def test_parse_collection_needs_its_sections() -> None:
    with pytest.raises(GuestOutputError, match="no @@STAT section"):
        parse_collection("@@DMESG\n@@DONE\n", PATHS, passes=2)
    with pytest.raises(GuestOutputError, match="ends inside the @@STAT section"):
        parse_collection(f"@@STAT\n{STAT_OK}", PATHS, passes=2)


def test_parse_stat_output_maps_records_back_to_paths() -> None:
    obs = parse_stat_output(STAT_OK, PATHS, passes=2)
    assert len(obs.passes) == 2
    assert obs.passes[0]["."] == GuestStat(45, 2, 3, DIR)
    assert obs.passes[0]["odd\nname"] == GuestStat(45, 4, 1, FILE)
    assert obs.passes[0]["sub/x"] == 2
    assert obs.passes[1] == obs.passes[0]
    assert obs.dirents == {".": (("a b", 3), ("odd\nname", 4), ("sub", 5))}
    assert obs.dirent_errors == {"sub": 13}
    sub = obs.passes[0]["sub"]
    assert isinstance(sub, GuestStat) and sub.is_dir
    assert GuestStat(45, 3, 1, FILE).guest_id == (45, 3)


def test_parse_stat_output_infers_the_pass_count() -> None:
    assert len(parse_stat_output(STAT_OK, PATHS).passes) == 2


def test_parse_stat_output_without_paths() -> None:
    obs = parse_stat_output("END 0\n", (), passes=2)
    assert obs.passes == ({}, {})


def test_missing_end_is_an_error() -> None:
    text = STAT_OK.replace("END 5\n", "")
    assert _error(text) == (
        "agent output line 14: output ends without an END record (cut off?); last line: 'E 2 4 2'"
    )


def test_empty_output_is_an_error() -> None:
    assert _error("") == "agent output is empty: no END record (did the agent run?)"


def test_wrong_end_count_is_an_error() -> None:
    assert _error(STAT_OK.replace("END 5", "END 6")) == (
        "agent output line 15: END count 6 but 5 paths were sent: 'END 6'"
    )


def test_text_after_end_is_an_error() -> None:
    assert _error(STAT_OK + "S 3 0 1 1 1 1\n") == (
        "agent output line 16: output continues after END: 'S 3 0 1 1 1 1'"
    )


def test_unknown_record_type_is_an_error() -> None:
    assert _error("X 1 2\nEND 5\n") == "agent output line 1: unknown record type 'X': 'X 1 2'"


def test_index_out_of_range_is_an_error() -> None:
    text = STAT_OK.replace("S 1 2 45 4 1", "S 1 9 45 4 1")
    assert _error(text) == (
        f"agent output line 3: index 9 out of range (there are 5 paths): 'S 1 9 45 4 1 {FILE}'"
    )


def test_duplicate_record_is_an_error() -> None:
    text = STAT_OK.replace("S 1 2 45 4 1", "S 1 1 45 4 1")
    assert _error(text) == (
        f"agent output line 3: second record for pass 1 index 1: 'S 1 1 45 4 1 {FILE}'"
    )


def test_missing_record_in_last_pass_is_an_error() -> None:
    text = STAT_OK.replace("E 2 4 2\n", "")
    assert _error(text) == "agent output line 14: pass 2 answered 4 of 5 paths: 'END 5'"


def test_next_pass_starting_early_is_an_error() -> None:
    text = STAT_OK.replace("E 1 4 2\n", "")
    assert _error(text) == (
        "agent output line 9: pass 2 began with pass 1 incomplete (4 of 5 paths): "
        f"'S 2 0 45 2 3 {DIR}'"
    )


def test_expected_pass_count_is_enforced() -> None:
    assert _error(STAT_OK, passes=1).startswith("agent output line 10: pass 2 out of range")
    assert (
        _error(STAT_OK, passes=3) == "agent output line 15: pass 3 answered 0 of 5 paths: 'END 5'"
    )


def test_pass_going_backwards_is_an_error() -> None:
    text = STAT_OK.replace("END 5\n", f"S 1 0 45 2 3 {DIR}\nEND 5\n")
    assert _error(text) == (
        f"agent output line 15: pass 1 record after pass 2 began: 'S 1 0 45 2 3 {DIR}'"
    )


def test_field_count_is_checked() -> None:
    assert _error("S 1 0 45 2 3\nEND 5\n") == (
        "agent output line 1: S record needs 6 fields: 'S 1 0 45 2 3'"
    )
    # A double space makes an empty field, which is not a number.
    assert _error("E 1  0 2\nEND 5\n") == (
        "agent output line 1: E record needs 3 fields: 'E 1  0 2'"
    )
    assert _error("E 1 0 -2\nEND 5\n") == (
        "agent output line 1: errno is not a decimal number ('-2'): 'E 1 0 -2'"
    )


def test_dirent_for_a_non_directory_is_an_error() -> None:
    text = STAT_OK.replace("DE 3 13", "DE 1 13")
    assert _error(text) == (
        "agent output line 9: DE record for index 1, not a directory: 'DE 1 13'"
    )


def test_dirent_before_its_stat_is_an_error() -> None:
    assert _error("D 0 3 61\nEND 5\n") == (
        "agent output line 1: D record for index 0 before its pass-1 stat: 'D 0 3 61'"
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("6", "entry name is not lowercase hex of whole bytes"),
        ("4A", "entry name is not lowercase hex of whole bytes"),
        ("2e", "invalid directory entry name b'.'"),
        ("612f62", "invalid directory entry name b'a/b'"),
    ],
)
def test_bad_entry_names_are_errors(name: str, reason: str) -> None:
    text = STAT_OK.replace(f"D 0 5 {b'sub'.hex()}", f"D 0 5 {name}")
    assert _error(text) == f"agent output line 8: {reason}: 'D 0 5 {name}'"


def test_error_carries_line_number_and_hint() -> None:
    with pytest.raises(GuestOutputError,
                       match=r"^agent output line 1: unknown record type 'Q': 'Q'\n") as info:
        parse_stat_output("Q\n", PATHS)
    assert info.value.line_number == 1
    assert info.value.line == "Q"
    assert "mdh-agent" in info.value.hint


def test_duplicate_input_paths_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        parse_stat_output("END 2\n", ("a", "a"))


READ_OK = "R 0 " + b"dev00/a b\n".hex() + "\nRE 1 21\nR 2 \nR 3\nEND 4\n"
READ_PATHS = ("a b", "sub", "empty", "empty2")


def test_parse_read_output() -> None:
    assert parse_read_output(READ_OK, READ_PATHS) == {
        "a b": b"dev00/a b\n",
        "sub": 21,
        "empty": b"",
        "empty2": b"",
    }


def _read_error(text: str) -> str:
    # As ``_error``: the callers pin the whole message.
    with pytest.raises(GuestOutputError, match=r"^agent output line \d+: ") as info:
        parse_read_output(text, READ_PATHS)
    return info.value.message


def test_parse_read_output_is_strict() -> None:
    assert _read_error(READ_OK.replace("RE 1 21\n", "")) == (
        "agent output line 4: answered 3 of 4 paths (first missing: index 1): 'END 4'"
    )
    assert _read_error(READ_OK.replace("END 4\n", "")) == (
        "agent output line 4: output ends without an END record (cut off?); last line: 'R 3'"
    )
    assert _read_error(READ_OK.replace("RE 1 21", "RE 0 21")) == (
        "agent output line 2: second record for index 0: 'RE 0 21'"
    )
    assert _read_error(READ_OK.replace("RE 1 21", "RX 1 21")) == (
        "agent output line 2: unknown record type 'RX': 'RX 1 21'"
    )
    assert _read_error(READ_OK.replace("RE 1 21", "RE 7 21")) == (
        "agent output line 2: index 7 out of range (there are 4 paths): 'RE 7 21'"
    )
    assert _read_error(READ_OK.replace("END 4", "END 3")) == (
        "agent output line 5: END count 3 but 4 paths were sent: 'END 3'"
    )
    assert _read_error(READ_OK.replace("RE 1 21", "RE 1 0")) == (
        "agent output line 2: errno 0 in an error record: 'RE 1 0'"
    )


def test_parse_read_output_rejects_oversized_content() -> None:
    big = "aa" * (READ_LIMIT + 1)
    message = _read_error(READ_OK.replace("R 3\n", f"R 3 {big}\n"))
    assert message.startswith("agent output line 4: content of 4097 bytes exceeds 4096: 'R 3 aaaa")
