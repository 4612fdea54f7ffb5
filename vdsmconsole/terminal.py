"""Raw mode for a terminal (cfmakeraw): bytes pass both ways unchanged."""

from __future__ import annotations

import termios


def make_raw(fd: int) -> None:
    """Put a terminal in raw mode (cfmakeraw), so bytes pass both ways unchanged.

    In the default cooked mode the line discipline echoes what the guest
    writes back into the guest, turns the guest's CR into NL (ICRNL) and our
    NL into CR NL (ONLCR), holds input back until a line ends (ICANON) and
    eats ^C, ^Z, ^S, ^Q (ISIG, IXON).  Python 3.11's
    ``tty.setraw`` leaves INLCR and IGNCR alone and flushes pending input
    (TCSAFLUSH), which would drop what the guest wrote before we attached;
    hence this, applied with TCSANOW.
    """
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
    )
    oflag &= ~termios.OPOST
    lflag &= ~(
        termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN
    )
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    attrs[0:4] = [iflag, oflag, cflag, lflag]
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    attrs[6] = cc
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
