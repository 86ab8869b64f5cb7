"""timerfd, signalfd and inotify pieces that need no live process: fdinfo as measured, mountinfo, constants."""

from __future__ import annotations

import pytest

from ckpt.kernel.fhandle import kernel_dev
from ckpt.kernel.timerfd import TFD_IOC_SET_TICKS
from ckpt.procfs.fdinfo import parse_fdinfo
from ckpt.procfs.mountinfo import parse_mountinfo

COMMON = b"pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1039\n"


def test_set_ticks_request_number() -> None:
    assert TFD_IOC_SET_TICKS == 0x40085400  # _IOW('T', 0, __u64) in linux/timerfd.h


def test_kernel_dev_splits_sdev_as_fdinfo_prints_it() -> None:
    assert kernel_dev(0xFE00000) == (254, 0)   # /dev/vda, as measured
    assert kernel_dev(0x1B) == (0, 27)         # a tmpfs


def test_fdinfo_of_a_timer_as_measured() -> None:
    info = parse_fdinfo(COMMON + b"clockid: 0\nticks: 0\nsettime flags: 03\nit_value: (29, 293642811)\n"
                                 b"it_interval: (0, 0)\n")
    tf = info.timerfd
    assert (tf.clockid, tf.settime_flags, tf.it_value, tf.it_interval) == (0, 3, (29, 293642811), (0, 0))


def test_fdinfo_signalfd_mask_is_the_user_mask() -> None:
    # signalfd(SIGUSR2, SIGKILL, 40): SIGKILL is dropped by the kernel
    assert parse_fdinfo(COMMON + b"sigmask:\t0000008000000800\n").sigmask == (1 << 11) | (1 << 39)


def test_mountinfo_with_escapes_and_optional_fields() -> None:
    mounts = parse_mountinfo(
        b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
        b"40 22 0:27 /sub /mnt/with\\040space rw master:2 shared:3 - tmpfs tmpfs rw,size=4k\n"
        b"41 22 0:28 / /x rw - proc proc rw\n")
    assert [(m.mnt_id, m.major, m.minor, m.root, m.mount_point, m.fstype) for m in mounts] == [
        (22, 254, 0, "/", "/", "ext4"), (40, 0, 27, "/sub", "/mnt/with space", "tmpfs"), (41, 0, 28, "/", "/x", "proc")]
    with pytest.raises(ValueError, match="mountinfo"):
        parse_mountinfo(b"garbage line\n")
