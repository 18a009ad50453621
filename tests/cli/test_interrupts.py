"""Ctrl-C stops long work even when CPython swallowed the KeyboardInterrupt."""

from __future__ import annotations

import os
import signal

import pytest

from shoal.cli.interrupts import CtrlC


def test_a_swallowed_interrupt_is_raised_again_at_the_next_check() -> None:
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing pressed: nothing raised
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            pass  # as a finaliser would swallow it
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is before, "the previous handler is back"
