"""An injected rt_sigaction answer is checked against the kernel's own account (SigCgt/SigIgn), issue 18."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ckpt.errors import TargetError
from ckpt.kernel.signals import SIG_DFL, SIG_IGN, sigbit
from ckpt.resources.signals import _check_against_status

HANDLER = 0x401136


@pytest.mark.parametrize("handler,cgt,ign", [(HANDLER, True, False), (SIG_IGN, False, True), (SIG_DFL, False, False)])
def test_an_answer_the_kernel_confirms_passes(handler: int, cgt: bool, ign: bool) -> None:
    st = SimpleNamespace(sigcgt=sigbit(10) if cgt else 0, sigign=sigbit(10) if ign else 0)
    _check_against_status(42, 10, handler, st)  # type: ignore[arg-type]


@pytest.mark.parametrize("handler,cgt,ign,words", [
    (SIG_DFL, True, False, "caught by the kernel's account"),      # a handler hidden behind a fake "default"
    (SIG_IGN, True, False, "answered ignored"),
    (HANDLER, False, False, "default by the kernel's account"),
    (SIG_DFL, False, True, "ignored by the kernel's account"),
])
def test_an_answer_the_kernel_denies_refuses_the_dump(handler: int, cgt: bool, ign: bool, words: str) -> None:
    st = SimpleNamespace(sigcgt=sigbit(10) if cgt else 0, sigign=sigbit(10) if ign else 0)
    with pytest.raises(TargetError, match="may have shaped") as err:
        _check_against_status(42, 10, handler, st)  # type: ignore[arg-type]
    assert words in str(err.value) and "signal 10" in str(err.value)
