"""The self-check's comparison (ckpt/observed.py) on synthetic accounts: what it masks, what it must not.

Real processes: every e2e restore runs the check (it is on by default); tests/e2e/test_self_check.py
makes a restored process differ on purpose and sees the restore fail.
"""

from __future__ import annotations

from ckpt import observed
from ckpt.image.pb import process_pb2


def _obs(**sections: list[tuple[str, str]]) -> process_pb2.Observed:
    return process_pb2.Observed(sections=[
        process_pb2.ObservedSection(name=name.replace("__", "/"),
                                    lines=[process_pb2.ObservedLine(key=k, value=v) for k, v in lines])
        for name, lines in sections.items()])


def test_equal_accounts_have_no_difference() -> None:
    a = _obs(status=[("Name", "sleep"), ("SigBlk", "0000000000000000")], fdinfo__3=[("pos", "0"), ("flags", "02")])
    assert observed.differences(a, a, root=True) == []


def test_an_unknown_line_that_differs_fails() -> None:
    a = _obs(status=[("Name", "x"), ("Some_new_field", "1")])
    b = _obs(status=[("Name", "x"), ("Some_new_field", "2")])
    (d,) = observed.differences(a, b, root=True)
    assert (d.section, d.key, d.dumped, d.restored) == ("status", "Some_new_field", "1", "2")


def test_a_line_or_section_gone_fails() -> None:
    a = _obs(status=[("Name", "x"), ("NoNewPrivs", "1")], fdinfo__4=[("pos", "0")])
    b = _obs(status=[("Name", "x")])
    got = {(d.section, d.key, d.dumped, d.restored) for d in observed.differences(a, b, root=True)}
    assert got == {("status", "NoNewPrivs", "1", None), ("fdinfo/4", "", "present", None)}


def test_masks_apply_by_name_and_ppid_only_for_the_root() -> None:
    a = _obs(status=[("TracerPid", "100"), ("VmRSS", "10 kB"), ("PPid", "1")])
    b = _obs(status=[("TracerPid", "200"), ("VmRSS", "99 kB"), ("PPid", "7")])
    assert observed.differences(a, b, root=True) == []
    assert [d.key for d in observed.differences(a, b, root=False)] == ["PPid"]


def test_fields_masked_inside_a_value() -> None:
    lock = "1: POSIX  ADVISORY  WRITE 4242 00:1a:5678 0 EOF"
    tfd = "5 events: 19 data: 5 pos:0 ino:1a sdev:f"
    a = _obs(fdinfo__3=[("lock", lock), ("tfd", tfd)])
    b = _obs(fdinfo__3=[("lock", lock.replace("1:", "7:", 1).replace("00:1a:5678", "00:2b:9")),
                        ("tfd", tfd.replace("ino:1a", "ino:99"))])
    assert observed.differences(a, b, root=True) == []
    c = _obs(fdinfo__3=[("lock", lock.replace("WRITE", "READ")), ("tfd", tfd.replace("events: 19", "events: 1"))])
    assert {d.key for d in observed.differences(a, c, root=True)} == {"lock", "tfd"}


def test_a_lost_lock_fails() -> None:
    a = _obs(fdinfo__3=[("pos", "0"), ("lock", "1: FLOCK ADVISORY WRITE 4242 00:1a:5678 0 EOF")])
    b = _obs(fdinfo__3=[("pos", "0")])
    (d,) = observed.differences(a, b, root=True)
    assert d.key == "lock" and d.restored is None and "FLOCK" in str(d)


def test_epoll_targets_compared_as_a_set() -> None:
    a = _obs(fdinfo__5=[("tfd", "3 events: 1 data: 3 pos:0 ino:1 sdev:2"), ("tfd", "4 events: 1 data: 4 pos:0 ino:3 sdev:2")])
    b = _obs(fdinfo__5=[("tfd", "4 events: 1 data: 4 pos:0 ino:9 sdev:2"), ("tfd", "3 events: 1 data: 3 pos:0 ino:8 sdev:2")])
    assert observed.differences(a, b, root=True) == []


def test_kernel_areas_only_when_the_vdso_was_routed() -> None:
    a = _obs(maps=[("7fff0000-7fff2000", "r-xp 0 [vdso] [rd ex]"), ("1000-2000", "rw-p 0  [rd wr]")])
    b = _obs(maps=[("7ffe0000-7ffe2000", "r-xp 0 [vdso] [rd ex]"), ("1000-2000", "rw-p 0  [rd wr]")])
    assert len(observed.differences(a, b, root=True)) == 2
    assert observed.differences(a, b, root=True, routed_vdso=True) == []


def test_settled_lines() -> None:
    assert observed.settled(1 << 9) == {"SigBlk": "0000000000000200"}
    assert observed.settled(0, {0, 1, 2, 5, 7, 8}) == {"SigBlk": "0000000000000000", "Cpus_allowed_list": "0-2,5,7-8"}


def test_describe_names_the_process_and_caps_the_list() -> None:
    diffs = [observed.Difference("status", f"K{i}", "1", "2") for i in range(9)]
    text = observed.describe(42, diffs, limit=2)
    assert text.startswith("process 42 came back different") and "(and 7 more)" in text


def test_on_another_kernel_only_lines_both_print_are_compared() -> None:
    a = _obs(status=[("Name", "x"), ("Kthread", "0"), ("Speculation_Store_Bypass", "vulnerable"), ("Umask", "0022")],
             maps=[("ffffffffff600000-ffffffffff601000", "--xp 0 [vsyscall] [ex]")])
    b = _obs(status=[("Name", "x"), ("untag_mask", "0xff"), ("Speculation_Store_Bypass", "not vulnerable"),
                     ("Umask", "0022")], maps=[])
    assert len(observed.differences(a, b, root=True)) == 4  # vsyscall, Kthread, untag_mask, speculation
    assert observed.differences(a, b, root=True, elsewhere=True) == []
    c = _obs(status=[("Name", "x"), ("Speculation_Store_Bypass", "thread force mitigated"), ("Umask", "0077")],
             maps=[])
    got = {d.key for d in observed.differences(c, b, root=True, elsewhere=True)}
    assert got == {"Speculation_Store_Bypass", "Umask"}  # set by the thread, and a value both print


def test_an_o_tmpfile_name_may_change_its_inode_number_only() -> None:
    """A file made with O_TMPFILE is "DIR/#INO (deleted)" in maps: made again, it has another inode."""
    a = _obs(maps=[("1000-2000", "rw-s 0 /tmp/#2277658 (deleted) [me mr ms mw rd sh wr]")])
    b = _obs(maps=[("1000-2000", "rw-s 0 /tmp/#2277743 (deleted) [me mr ms mw rd sh wr]")])
    assert observed.differences(a, b, root=True) == []
    c = _obs(maps=[("1000-2000", "rw-s 0 /var/#2277743 (deleted) [me mr ms mw rd sh wr]")])
    d = _obs(maps=[("1000-2000", "rw-s 0 /tmp/.ckpt-ghost-1-2277658 (deleted) [me mr ms mw rd sh wr]")])
    assert len(observed.differences(a, c, root=True)) == 1 and len(observed.differences(a, d, root=True)) == 1


def test_an_inet_section_an_older_dump_did_not_record_is_not_compared() -> None:
    """An image of a ckpt before the inet account has none: the socket's own sections still must match."""
    inet = [("local", "127.0.0.1:80"), ("peer", "none"), ("state", "LISTEN"), ("waiting", "0"), ("backlog", "8")]
    old = _obs(fdinfo__3=[("pos", "0")])
    assert observed.differences(old, _obs(fdinfo__3=[("pos", "0")], inet__3=inet), root=True) == []
    now = _obs(fdinfo__3=[("pos", "0")], inet__3=inet)
    (d,) = observed.differences(now, old, root=True)  # recorded at the dump and gone: a loss
    assert (d.section, d.dumped, d.restored) == ("inet/3", "present", None)


def test_lines_an_older_dump_did_not_record_are_compared_only_when_it_did() -> None:
    """rdhup and an IPv6 socket's IP_TOS are newer than the inet and sockopt sections: an older image lacks them."""
    old = _obs(inet__3=[("state", "ESTABLISHED")], sockopt__3=[("IPV6_TCLASS", "default")])
    now = _obs(inet__3=[("state", "ESTABLISHED"), ("rdhup", "no")],
               sockopt__3=[("IPV6_TCLASS", "default"), ("IP_TOS", "default"), ("SO_GET_FILTER", "default")])
    assert observed.differences(old, now, root=True) == []
    shut = _obs(inet__3=[("state", "ESTABLISHED"), ("rdhup", "yes")],
                sockopt__3=[("IPV6_TCLASS", "default"), ("IP_TOS", "8"), ("SO_GET_FILTER", "default")])
    got = observed.differences(shut, now, root=True)
    assert sorted((d.key, d.dumped, d.restored) for d in got) == [("IP_TOS", "8", "default"), ("rdhup", "yes", "no")]


def test_tolerated_inet_lines_only() -> None:
    a = _obs(inet__4=[("state", "LISTEN"), ("waiting", "2"), ("backlog", "8")])
    b = _obs(inet__4=[("state", "LISTEN"), ("waiting", "0"), ("backlog", "9")])
    got = observed.differences(a, b, root=True, tolerated={("inet/4", "waiting")})
    assert [(d.key, d.dumped, d.restored) for d in got] == [("backlog", "8", "9")]


def test_unix_diag_may_be_missing_on_one_side_only_on_another_kernel() -> None:
    """A kernel without unix_diag (a guest that does not load the module) gives no unix_diag/N section: on
    another kernel that is no difference; on the same kernel a section gone is a loss."""
    ux = [("state", "1"), ("connected", "yes"), ("shutdown", "0"), ("name", ""), ("file", "no"), ("rqueue", "0")]
    with_diag = _obs(fdinfo__3=[("pos", "0")], unix_diag__3=ux)
    without = _obs(fdinfo__3=[("pos", "0")])
    assert observed.differences(with_diag, without, root=True, elsewhere=True) == []
    assert observed.differences(without, with_diag, root=True, elsewhere=True) == []
    (d,) = observed.differences(with_diag, without, root=True)
    assert (d.section, d.dumped, d.restored) == ("unix_diag/3", "present", None)


def test_ksm_lines_a_kernel_does_not_print_are_no_difference_on_another_kernel() -> None:
    """6.12's ksm_stat has no ksm_merge_any / ksm_mergeable lines, 6.18's has: a process moved between them
    compares the lines both print; on one kernel a line gone is a difference."""
    newer = _obs(ksm=[("ksm_merge_any", "no"), ("ksm_mergeable", "no")])
    older = _obs(ksm=[])
    assert observed.differences(newer, older, root=True, elsewhere=True) == []
    assert observed.differences(older, newer, root=True, elsewhere=True) == []
    assert {d.key for d in observed.differences(newer, older, root=True)} == {"ksm_merge_any", "ksm_mergeable"}
    on = _obs(ksm=[("ksm_merge_any", "yes"), ("ksm_mergeable", "yes")])
    assert {d.key for d in observed.differences(on, newer, root=True, elsewhere=True)} == {"ksm_merge_any",
                                                                                          "ksm_mergeable"}
