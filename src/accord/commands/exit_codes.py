"""The exit codes of every ``accord`` sub-command: one table, documented in the README.

=====  ===============  ==========================================================
code   name             meaning
=====  ===============  ==========================================================
0      ``OK``           the command did what was asked
1      ``FAILED``       the work ran and failed (a demo check, a party that failed,
                        an unexpected internal error)
2      ``USAGE``        a bad option, value or config file; nothing was started
3      ``REFUSED``      an input, peer, credential or attestation was refused
4      ``DIVERGED``     the run finished, but at least one policy diverged (its
                        model's validation loss stopped being finite)
130    ``INTERRUPTED``  stopped by Ctrl-C (SIGINT); simulate, server and federate
                        finish the round and write what was done first
143    ``TERMINATED``   stopped by SIGTERM; likewise
=====  ===============  ==========================================================
"""

from __future__ import annotations

import enum

from accord.errors import AccordError, ConfigurationError

__all__ = ["ExitCode", "exit_code_of"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    DIVERGED = 4
    INTERRUPTED = 130
    TERMINATED = 143


def exit_code_of(error: AccordError) -> ExitCode:
    """A bad setting is a usage error; every other refusal (input data, peer, protocol,
    attestation, channel) is ``REFUSED``."""
    if isinstance(error, ConfigurationError):
        return ExitCode.USAGE
    return ExitCode.REFUSED
