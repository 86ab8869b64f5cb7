"""Canned /proc text through the ckpt.procfs parsers: the corner cases live processes rarely show."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.errors import TargetGone
from ckpt.procfs import (
    AT,
    ProcessRef,
    parse_auxv,
    parse_fdinfo,
    parse_maps,
    parse_smaps,
    parse_smaps_vmflags,
    parse_stat,
    parse_status,
    read_stat,
    read_status_values,
)
from ckpt.procfs._proc import ProcDir
from ckpt.procfs.status import parse_cpu_list

# --------------------------------------------------------------------------- stat

# A real 6.18 line (52 fields) with the comm swapped for one that tries to
# break a naive parser: a ") (" inside, spaces, and a trailing ")".
STAT_TAIL = (
    b" S 1 1234 1234 34817 1234 4194560 1131 0 0 0 3 1 0 0 20 -5 3 0 9012 1234567680 3370 "
    b"18446744073709551615 94808936095744 94808936100181 140729580938912 0 0 0 0 16781312 2 1 0 0 "
    b"17 1 0 0 0 0 0 94808936111536 94808936112152 94809645756416 140729580943616 140729580944099 "
    b"140729580944099 140729580945383 0\n"
)


def test_stat_comm_with_parens_and_spaces() -> None:
    s = parse_stat(b"4321 (a) (b c))" + STAT_TAIL)
    assert s.pid == 4321
    assert s.comm == "a) (b c)"
    assert s.state == "S"
    assert (s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid) == (1, 1234, 1234, 34817, 1234)
    assert s.nice == -5 and s.priority == 20 and s.num_threads == 3
    assert s.starttime == 9012 and s.vsize == 1234567680 and s.rss == 3370
    assert s.rsslim == 2**64 - 1
    assert s.start_code == 94808936095744 and s.end_code == 94808936100181
    assert s.start_brk == 94809645756416 and s.env_end == 140729580945383
    assert s.exit_signal == 17 and s.processor == 1 and s.exit_code == 0
    assert not s.is_kthread
    assert parse_stat(b"2 (kthreadd)" + STAT_TAIL.replace(b" 4194560 ", b" 2129984 ", 1)).is_kthread


def test_stat_comm_with_newline_and_empty_comm() -> None:
    assert parse_stat(b"7 (x\ny)" + STAT_TAIL).comm == "x\ny"
    assert parse_stat(b"7 ()" + STAT_TAIL).comm == ""


def test_stat_zombie_exit_code_and_missing_mm() -> None:
    # exit(3) of a zombie: the wait status 3 << 8; no mm, so addresses are 0.
    line = (b"4208 (python3) Z 4167 4144 2663 0 -1 4227148 222 0 0 0 0 0 0 0 20 0 1 0 53093 0 0 "
            b"18446744073709551615 0 0 0 0 0 0 0 16781312 2 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 768\n")
    s = parse_stat(line)
    assert s.state == "Z" and s.exit_code == 768 and s.start_code == 0 and s.vsize == 0


def test_stat_exiting_leader_is_not_a_zombie_yet() -> None:
    # A killed 256 MiB process seen here: its leader still R while it frees its memory, its other
    # threads gone, PF_EXITING set; control.seize.alive() counts it as dead.
    line = b"4321 (mig_writer) R " + STAT_TAIL.split(b" ", 2)[2].replace(b" 4194560 ", b" 4195404 ", 1)
    s = parse_stat(line)
    assert s.state == "R" and s.exiting
    assert not parse_stat(b"4321 (a)" + STAT_TAIL).exiting


def test_stat_rejects_truncated() -> None:
    with pytest.raises(ValueError):
        parse_stat(b"1 (init) S 0 1 1 0 -1\n")
    with pytest.raises(ValueError):
        parse_stat(b"garbage without comm\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=15).filter(lambda b: b"\0" not in b))
def test_stat_any_comm_round_trips(comm: bytes) -> None:
    # PR_SET_NAME accepts every byte but NUL, and stat prints it raw.
    s = parse_stat(b"99 (" + comm + b")" + STAT_TAIL)
    assert os.fsencode(s.comm) == comm and s.ppid == 1


# --------------------------------------------------------------------------- maps

LONG = "/tmp/" + "d" * 250 + "/" + "x" * 3800
MAPS = f"""\
55aab8fca000-55aab8fcc000 r--p 00000000 fe:00 260386                     /usr/bin/head
55aab8fcc000-55aab8fd2000 r-xp 00002000 fe:00 260386                     /usr/bin/head
5583f1b7a000-5583f1b9b000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00003000 fe:00 1234                       /tmp/my data file.bin (deleted)
7f0000001000-7f0000002000 r--p 00000000 fe:00 1235                       /tmp/trailing space  
7f0000002000-7f0000003000 r--p 00001000 fe:00 1236                       /tmp/new\\012line
7f0000003000-7f0000004000 rw-p 00000000 00:00 0                          [anon:my arena]
7f0000004000-7f0000005000 rw-s 00000000 00:01 77                         [anon_shmem:shm name]
7f0000005000-7f0000006000 rw-s 00000000 00:01 1028                       /dev/zero (deleted)
7f0000006000-7f0000007000 rw-s 00000000 00:01 7                          /memfd:buf (deleted)
7f0000007000-7f0000008000 ---p 00000000 00:00 0 
7f0000008000-7f0000009000 r--p 00000000 103:0a 99                        {LONG}
7fc6b477c000-7fc6b4780000 r--p 00000000 00:00 0                          [vvar]
7fc6b4780000-7fc6b4782000 r--p 00000000 00:00 0                          [vvar_vclock]
7fc6b4782000-7fc6b4784000 r-xp 00000000 00:00 0                          [vdso]
7fff26be6000-7fff26c07000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
""".encode()


def test_maps_fields_and_special_names() -> None:
    vmas = parse_maps(MAPS)
    assert len(vmas) == 17
    head, text, heap = vmas[0], vmas[1], vmas[2]
    assert (head.start, head.end, head.size) == (0x55AAB8FCA000, 0x55AAB8FCC000, 0x2000)
    assert head.perms == "r--p" and head.prot == 1 and head.is_file and not head.is_anonymous
    assert (head.dev_major, head.dev_minor, head.inode) == (0xFE, 0, 260386)
    assert text.exec and text.offset == 0x2000 and text.pgoff == 2 and text.prot == 5
    assert heap.is_heap and heap.is_anonymous and not heap.is_file and heap.path == "[heap]"
    by_path = {v.path: v for v in vmas}
    assert by_path["[vvar_vclock]"].is_special and by_path["[vdso]"].is_special
    vsys = by_path["[vsyscall]"]
    assert vsys.start == 0xFFFFFFFFFF600000 and vsys.exec and not vsys.read and vsys.is_special
    assert by_path["[stack]"].is_stack and by_path["[stack]"].write
    guard = vmas[10]
    assert guard.path == "" and guard.prot == 0 and guard.is_anonymous  # line ends in "0 "


def test_maps_paths_spaces_deleted_newline_long() -> None:
    vmas = parse_maps(MAPS)
    deleted = vmas[3]
    assert deleted.path == "/tmp/my data file.bin" and deleted.deleted and deleted.shared
    assert deleted.offset == 0x3000 and deleted.is_file
    assert vmas[4].path == "/tmp/trailing space  " and not vmas[4].deleted
    assert vmas[5].path == "/tmp/new\nline"
    assert vmas[11].path == LONG and (vmas[11].dev_major, vmas[11].dev_minor) == (0x103, 0xA)
    assert vmas[8].path == "/dev/zero" and vmas[8].deleted and vmas[8].is_file  # shared anonymous
    assert vmas[9].path == "/memfd:buf" and vmas[9].deleted


def test_maps_anon_names() -> None:
    vmas = parse_maps(MAPS)
    assert vmas[6].anon_name == "my arena" and vmas[6].is_anonymous and not vmas[6].is_file
    assert vmas[7].anon_name == "shm name" and vmas[7].shared and not vmas[7].is_anonymous
    assert vmas[0].anon_name is None


def test_maps_non_utf8_name_round_trips() -> None:
    line = b"7f0000000000-7f0000001000 r--p 00000000 fe:00 5  /tmp/\xff\xfe name\n"
    (v,) = parse_maps(line)
    assert os.fsencode(v.path) == b"/tmp/\xff\xfe name"


def test_maps_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_maps(b"not a maps line\n")
    with pytest.raises(ValueError):
        parse_maps(b"zz-yy rw-p 0 00:00 0\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b and b"\\012" not in b))
def test_maps_any_file_name_round_trips(tail: bytes) -> None:
    # What the kernel prints for "/<tail>": newline escaped as \012, padded to column 73.
    name = b"/" + tail
    head = b"7f0000000000-7f0000001000 r--p 00000000 fe:00 42"
    line = head + b" " * max(1, 73 - len(head)) + name.replace(b"\n", b"\\012") + b"\n"
    (v,) = parse_maps(line)
    expect = name[: -len(b" (deleted)")] if name.endswith(b" (deleted)") else name
    assert os.fsencode(v.path) == expect and v.deleted == name.endswith(b" (deleted)")


# --------------------------------------------------------------------------- smaps

SMAPS = b"""\
55641c31b000-55641c31d000 r--p 00000000 fe:00 260386                     /usr/bin/head
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         8 kB
Private_Dirty:         0 kB
Referenced:            8 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr mw me 
7f0000000000-7f0040000000 rw-p 00000000 00:00 0                          [anon:big]
Size:            1048576 kB
Rss:              524288 kB
Pss:              524288 kB
Private_Dirty:    520192 kB
Anonymous:        524288 kB
AnonHugePages:    409600 kB
Swap:               4096 kB
Locked:                0 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me ac dd wf uw gd zz 
7fff26be6000-7fff26c07000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
"""


def test_smaps_counters_and_vmflags() -> None:
    first, big, stack = parse_smaps(SMAPS)
    assert first.vma.path == "/usr/bin/head" and first.size == 8192 and first.rss == 8192
    assert first.private_clean == 8192 and first.fields["KernelPageSize"] == 4096
    assert first.vmflags == {"rd", "mr", "mw", "me"} and first.thp_eligible is False
    assert first.protection_key is None
    assert big.vma.anon_name == "big" and big.size == 1 << 30
    assert big.anonymous == 512 << 20 and big.anon_huge_pages == 400 << 20 and big.swap == 4 << 20
    assert big.private_dirty == 520192 * 1024 and big.thp_eligible is True and big.protection_key == 0
    # unknown mnemonics ("zz") are kept, not dropped
    assert big.vmflags == {"rd", "wr", "mr", "mw", "me", "ac", "dd", "wf", "uw", "gd", "zz"}
    assert big.vma.vmflags == big.vmflags
    # a VMA with only some counters (older kernel / truncated read): defaults to 0, no VmFlags
    assert stack.rss == 12 * 1024 and stack.swap == 0 and stack.vmflags == frozenset()


def test_smaps_matches_maps_view() -> None:
    assert [e.vma.start for e in parse_smaps(SMAPS)] == [0x55641C31B000, 0x7F0000000000, 0x7FFF26BE6000]


def test_smaps_counter_before_header_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_smaps(b"Rss: 4 kB\n")
    with pytest.raises(ValueError):
        parse_smaps_vmflags(b"Rss: 4 kB\nVmFlags: rd\n")


def test_smaps_vmflags_only_is_the_full_parse_without_counters() -> None:
    # The stack block has no VmFlags: the fast path must notice and parse in full.
    assert parse_smaps_vmflags(SMAPS) == [e.vma for e in parse_smaps(SMAPS)]
    complete = SMAPS + b"VmFlags: rd wr mr mw me gd ac \n"
    vmas = parse_smaps_vmflags(complete)
    assert vmas == [e.vma for e in parse_smaps(complete)]
    assert [v.vmflags for v in vmas] == [{"rd", "mr", "mw", "me"}, {"rd", "wr", "mr", "mw", "me", "ac", "dd", "wf",
                                                                     "uw", "gd", "zz"},
                                         {"rd", "wr", "mr", "mw", "me", "gd", "ac"}]
    # a block in the middle without its VmFlags line
    middle = complete.replace(b"VmFlags: rd wr mr mw me ac dd wf uw gd zz \n", b"")
    assert parse_smaps_vmflags(middle) == [e.vma for e in parse_smaps(middle)]
    assert parse_smaps_vmflags(middle)[1].vmflags == frozenset()
    assert parse_smaps_vmflags(b"") == []


# --------------------------------------------------------------------------- status

STATUS_618 = b"""\
Name:\tmy\\\\proc\\nname 
Umask:\t0027
State:\tS (sleeping)
Tgid:\t3630
Ngid:\t0
Pid:\t3630
PPid:\t3628
TracerPid:\t0
Uid:\t1000\t1001\t1002\t1003
Gid:\t100\t101\t102\t103
FDSize:\t256
Groups:\t4 24 27 
NStgid:\t3630\t12
NSpid:\t3630\t12
NSpgid:\t3628\t10
NSsid:\t2663\t1
Kthread:\t0
VmPeak:\t    3060 kB
VmRSS:\t    1740 kB
RssAnon:\t     116 kB
HugetlbPages:\t       0 kB
Threads:\t3
SigQ:\t2/96365
SigPnd:\t0000000000000100
ShdPnd:\t0000000000004000
SigBlk:\t0000000000010000
SigIgn:\t0000000001001000
SigCgt:\t0000000180000002
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
Speculation_Store_Bypass:\tvulnerable
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t15
nonvoluntary_ctxt_switches:\t2
"""

# A 3.x-era kernel: no Umask, NS*, Kthread, CapAmb, NoNewPrivs, Seccomp_filters, Ngid;
# a zombie also lacks the Vm lines; no groups at all.
STATUS_OLD_ZOMBIE = b"""\
Name:\tdefunct
State:\tZ (zombie)
Tgid:\t55
Pid:\t55
PPid:\t1
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t0
Groups:\t
Threads:\t1
SigQ:\t0/7823
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\t0000000000000000
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\tffffffffffffffff
CapEff:\tffffffffffffffff
CapBnd:\tffffffffffffffff
Cpus_allowed:\t1
Cpus_allowed_list:\t0
voluntary_ctxt_switches:\t1
nonvoluntary_ctxt_switches:\t0
"""


def test_status_618() -> None:
    s = parse_status(STATUS_618)
    assert s.name == "my\\proc\nname "  # escaped backslash and newline; trailing space kept
    assert s.umask == 0o027 and s.state == "S"
    assert (s.tgid, s.pid, s.ppid, s.tracerpid, s.ngid) == (3630, 3630, 3628, 0, 0)
    assert s.uid == (1000, 1001, 1002, 1003) and s.gid == (100, 101, 102, 103)
    assert s.groups == (4, 24, 27) and s.fdsize == 256
    assert s.nspid == (3630, 12) and s.nstgid == (3630, 12) and s.nspgid == (3628, 10) and s.nssid == (2663, 1)
    assert s.kthread is False and s.threads == 3 and s.sigq == (2, 96365)
    assert s.sigpnd == 1 << 8 and s.shdpnd == 1 << 14 and s.sigblk == 1 << 16
    assert s.sigign == 0x1001000 and s.sigcgt == 0x180000002
    assert s.capprm == 0x1FFFEFFFFFF and s.capinh == 0 and s.capamb == 0
    assert s.nonewprivs is True and s.seccomp == 2 and s.seccomp_filters == 1
    assert s.cpus_allowed == {0, 1} and s.mems_allowed_list == "0"
    assert s.voluntary_ctxt_switches == 15 and s.nonvoluntary_ctxt_switches == 2
    assert s.vm["VmRSS"] == 1740 * 1024 and s.vm["HugetlbPages"] == 0
    assert s.fields["Speculation_Store_Bypass"] == "vulnerable"


def test_status_old_kernel_zombie() -> None:
    s = parse_status(STATUS_OLD_ZOMBIE)
    assert s.state == "Z" and s.umask is None and s.ngid is None
    assert s.nspid is None and s.nstgid is None and s.kthread is None
    assert s.capamb is None and s.nonewprivs is None and s.seccomp is None and s.seccomp_filters is None
    assert s.groups == () and dict(s.vm) == {} and s.capbnd == 2**64 - 1
    assert s.mems_allowed_list is None


def test_status_missing_required_line() -> None:
    with pytest.raises(ValueError, match="Uid"):
        parse_status(b"Name:\tx\nState:\tR (running)\n")


def test_status_values_without_the_full_parse(tmp_path) -> None:
    (tmp_path / "3630" / "task" / "3631").mkdir(parents=True)
    (tmp_path / "3630" / "status").write_bytes(STATUS_618)
    (tmp_path / "3630" / "task" / "3631" / "status").write_bytes(STATUS_618.replace(b"SigPnd:\t0000000000000100",
                                                                                  b"SigPnd:\t0000000000000200"))
    proc = ProcDir(3630, root=str(tmp_path))
    assert read_status_values(3630, "Umask", "SigIgn", "Name", proc=proc) == ["0027", "0000000001001000",
                                                                             "my\\\\proc\\nname"]
    assert read_status_values(3630, "SigPnd", tid=3631, proc=proc) == ["0000000000000200"]
    with pytest.raises(ValueError, match="Nope"):
        read_status_values(3630, "Nope", proc=proc)


def test_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("") == frozenset()


# --------------------------------------------------------------------------- fdinfo

COMMON = b"pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1039\n"


def test_fdinfo_common_fields_and_regular_file_with_lock() -> None:
    info = parse_fdinfo(b"pos:\t12345\nflags:\t0102002\nmnt_id:\t24\nino:\t3\n"
                        b"lock:\t1: POSIX  ADVISORY  WRITE 4087 fe:00:1234 0 EOF\n", fd=5)
    assert info.fd == 5 and info.pos == 12345 and info.flags == 0o102002 and info.mnt_id == 24 and info.ino == 3
    assert info.locks == ("1: POSIX  ADVISORY  WRITE 4087 fe:00:1234 0 EOF",)
    assert info.eventfd_count is None and info.timerfd is None and info.epoll_targets == ()


def test_fdinfo_without_ino_line() -> None:  # before 5.14
    assert parse_fdinfo(b"pos:\t0\nflags:\t02\nmnt_id:\t9\n").ino is None


def test_fdinfo_eventfd_count_is_hex() -> None:
    info = parse_fdinfo(COMMON + b"eventfd-count:               1f\neventfd-id: 4\neventfd-semaphore: 1\n")
    assert info.eventfd_count == 31 and info.eventfd_semaphore is True
    assert info.fields["eventfd-id"] == "4"


def test_fdinfo_epoll_targets() -> None:
    info = parse_fdinfo(COMMON
                        + b"tfd:        3 events:       19 data:                3  pos:0 ino:40f sdev:10\n"
                        + b"tfd:        5 events: 80000019 data:     deadbeefcafe  pos:7 ino:1c5a sdev:f\n")
    a, b = info.epoll_targets
    assert (a.tfd, a.events, a.data, a.pos, a.ino, a.sdev) == (3, 0x19, 3, 0, 0x40F, 0x10)
    assert (b.tfd, b.events, b.data, b.pos) == (5, 0x80000019, 0xDEADBEEFCAFE, 7)


def test_fdinfo_inotify_watches() -> None:
    info = parse_fdinfo(
        COMMON
        + b"inotify wd:2 ino:13 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 "
          b"f_handle:1300000000000000\n"
        + b"inotify wd:a ino:3f7e8 sdev:fe00000 mask:300 ignored_mask:0\n")
    w1, w2 = info.inotify_watches
    assert (w1.wd, w1.ino, w1.sdev, w1.mask, w1.fhandle_type) == (2, 0x13, 0xFE00000, 2, 1)
    assert w1.f_handle == bytes.fromhex("1300000000000000")
    assert (w2.wd, w2.mask, w2.f_handle) == (10, 0x300, None)


def test_fdinfo_fanotify() -> None:
    info = parse_fdinfo(COMMON + b"fanotify flags:10 event-flags:0\n"
                        b"fanotify ino:3f7e8 sdev:fe00000 mflags:0 mask:1 ignored_mask:0\n"
                        b"fanotify mnt_id:1d mflags:0 mask:8 ignored_mask:0\n")
    assert len(info.records) == 3
    assert [m.get("mask") for m in info.fanotify_marks] == ["1", "8"]


def test_fdinfo_timerfd() -> None:
    info = parse_fdinfo(COMMON + b"clockid: 1\nticks: 4\nsettime flags: 01\n"
                        b"it_value: (99, 999688486)\nit_interval: (1, 0)\n")
    t = info.timerfd
    assert t is not None and t.clockid == 1 and t.ticks == 4 and t.settime_flags == 1
    assert t.it_value == (99, 999688486) and t.it_interval == (1, 0)


def test_fdinfo_signalfd_uffd_pidfd() -> None:
    assert parse_fdinfo(COMMON + b"sigmask:\t0000000000004200\n").sigmask == 0x4200
    uffd = parse_fdinfo(COMMON + b"pending:\t0\ntotal:\t0\nAPI:\taa:1c0:80000000000001ff\n")
    assert uffd.uffd_api == (0xAA, 0x1C0, 0x80000000000001FF)
    assert parse_fdinfo(COMMON + b"Pid:\t4087\nNSpid:\t4087\t5\n").pidfd_pid == 4087
    assert parse_fdinfo(COMMON + b"Pid:\t4087\n").uffd_api is None  # "API" alone is not enough


def test_fdinfo_unknown_lines_are_kept() -> None:
    info = parse_fdinfo(COMMON + b"tty-index:\t3\nsome future line without colon\nscm_fds: 4 5\n")
    assert info.fields["tty-index"] == "3" and info.fields["scm_fds"] == "4 5"


def test_fdinfo_requires_common_fields() -> None:
    with pytest.raises(ValueError):
        parse_fdinfo(b"eventfd-count: 1\n")


# --------------------------------------------------------------------------- auxv


def test_auxv_pairs_names_and_raw() -> None:
    pairs = [(AT.SYSINFO_EHDR, 0x7FFF0000), (AT.MINSIGSTKSZ, 11952), (AT.PAGESZ, 4096),
             (AT.ENTRY, 0x401000), (AT.RANDOM, 0x7FFE0010), (99, 5), (AT.NULL, 0)]
    raw = b"".join(struct.pack("=QQ", t, v) for t, v in pairs) + b"\0" * 16  # kernel pads after AT_NULL
    a = parse_auxv(raw)
    assert a.raw == raw and len(a.entries) == 6
    assert a[AT.ENTRY] == 0x401000 and a.get(AT.HWCAP2) is None and AT.RANDOM in a
    assert a.named()[0] == ("AT_SYSINFO_EHDR", 0x7FFF0000) and a.named()[5] == ("99", 5)
    with pytest.raises(KeyError):
        a[AT.EXECFN]


def test_auxv_empty_and_truncated() -> None:
    assert parse_auxv(b"").entries == ()
    assert parse_auxv(struct.pack("=QQ", AT.PAGESZ, 4096) + b"\1\2\3").entries == ((AT.PAGESZ, 4096),)


# --------------------------------------------------------------------------- identity / errors


def test_vanished_pid_is_target_gone() -> None:
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    with pytest.raises(TargetGone) as ei:
        read_stat(pid_max + 1)  # can never exist
    assert ei.value.pid == pid_max + 1


def test_process_ref_detects_reuse() -> None:
    me = ProcessRef.of(os.getpid())
    assert me.is_current()
    me.check()
    stale = ProcessRef(os.getpid(), me.starttime - 1)  # "the process that had this pid before"
    assert not stale.is_current()
    with pytest.raises(TargetGone, match="reused"):
        stale.check()


def test_smaps_lock_on_fault_printed_as_unknown_is_named() -> None:
    # Debian 12's 6.1 has no mnemonic for VM_LOCKONFAULT: mlock2(MLOCK_ONFAULT) shows "lo ??"
    data = b"7f0000000000-7f0000010000 rw-p 00000000 00:00 0 \nRss: 0 kB\nVmFlags: rd wr mr mw me lo ?? ac sd \n"
    assert parse_smaps(data)[0].vmflags == {"rd", "wr", "mr", "mw", "me", "lo", "lf", "ac", "sd"}
    assert parse_smaps_vmflags(data)[0].vmflags == parse_smaps(data)[0].vmflags
    unlocked = data.replace(b" lo ??", b" ??")  # not beside lo: left as printed
    assert "??" in parse_smaps_vmflags(unlocked)[0].vmflags
