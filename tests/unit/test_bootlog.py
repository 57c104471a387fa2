"""Reading the guest's init steps and its failure from the boot console."""

from __future__ import annotations

from harness.guest.bootlog import Step, complete_lines, init_failure, parse_steps

READY = (
    "[    0.000000] Linux version 6.12.38+deb13-amd64\r\n"
    "mdh-init: step modules ok 7 loaded\r\n"
    "mdh-init: step 9p ok 1 mounted\r\n"
    "mdh-init: step net ok eth0 10.0.2.15/24\r\n"
    "mdh-init: step sshd ok listening on :22\r\n"
    "MDH-READY 6.12.38+deb13-amd64\r\n"
)

MODULE_FAILURE = (
    "[    0.512000] Run /init as init process\n"
    "mdh-init: step net ok eth0 10.0.2.15/24\n"
    "[    0.601000] random: crng init done\n"
    "[    0.602000] netfs: loading out-of-tree module taints kernel.\n"
    "[    0.603000] 9p: .gnu.linkonce.this_module section size must match the kernel's "
    "built struct module size at run time\n"
    "mdh-init: step modules fail insmod 9p.ko: insmod: can't insert '/lib/modules/9p.ko': "
    "invalid module format\n"
    "MDH-FAILED modules: insmod 9p.ko: insmod: can't insert '/lib/modules/9p.ko': "
    "invalid module format\n"
)


def test_ready_guest_has_no_failure() -> None:
    assert init_failure(READY) is None
    assert parse_steps(READY) == [
        Step("modules", True, "7 loaded"), Step("9p", True, "1 mounted"),
        Step("net", True, "eth0 10.0.2.15/24"), Step("sshd", True, "listening on :22"),
    ]


def test_module_failure_keeps_the_loader_complaint() -> None:
    report = init_failure(MODULE_FAILURE)
    assert report is not None
    lines = report.splitlines()
    # Context starts after the previous step report, so the "net ok" line is not in it.
    assert lines[0] == "[    0.601000] random: crng init done"
    assert "section size must match the kernel's" in report
    assert lines[-1].startswith("MDH-FAILED modules: insmod 9p.ko")


def test_context_is_at_most_five_lines() -> None:
    noise = "".join(f"[    1.{i:06d}] noise {i}\n" for i in range(20))
    text = noise + "mdh-init: step 9p fail kernel has no 9p filesystem\n"
    report = init_failure(text)
    assert report is not None
    assert report.splitlines() == [
        *(f"[    1.{i:06d}] noise {i}" for i in range(15, 20)),
        "mdh-init: step 9p fail kernel has no 9p filesystem",
    ]


def test_half_written_line_is_not_read() -> None:
    partial = "mdh-init: step modules ok 4 loaded\nMDH-FAILED 9p: mount -t 9p -o tr"
    assert init_failure(partial) is None
    assert complete_lines(partial) == ["mdh-init: step modules ok 4 loaded"]
    assert complete_lines("no newline yet") == []


def test_terminal_line_alone_counts_and_markers_may_follow_kernel_text() -> None:
    text = "[    2.0] virtio_net virtio0: ...MDH-FAILED sshd: dropbear: bad host key\n"
    assert init_failure(text) == text.rstrip("\n")


def test_ready_line_is_not_mistaken_for_a_failure() -> None:
    # "fail" inside an ok step's detail, and an MDH-READY line, are not failures.
    text = "mdh-init: step 9p ok 1 mounted (no fail)\nMDH-READY 6.1.0-56-amd64\n"
    assert init_failure(text) is None
