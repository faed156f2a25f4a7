"""What a streamvlm command prints on stderr besides its own lines.

A plain run shows only streamvlm's lines (its answers, its own progress bar, its
summary); ``--verbose`` gives the libraries their say again (transformers' logging and
weight-loading bar). The command line calls ``configure_output`` once at start; a
library user who never calls it keeps transformers' logging as it was and gets no
weight-loading bar. This module imports nothing heavy: the modules that talk to a
library apply the choice when they are first imported (``when_configured``), so it
costs no start-up time in commands that never load a model.

Python warnings are fixed at their source, not filtered: streamvlm calls no deprecated
API, and on the tested transformers and torch versions a watch run raises none (checked
with ``-W always`` across its options). A new one should be fixed where it is raised;
one streamvlm truly cannot avoid gets a ``warnings.filterwarnings`` here, narrowed to
its category and module, with the reason beside it.
"""

from __future__ import annotations

from collections.abc import Callable

_verbose: bool | None = None  # None until configure_output: a library user's process is left alone
_appliers: list[Callable[[bool], None]] = []


def configure_output(verbose: bool) -> None:
    """Choose, for this process, whether third-party libraries may print on stderr.

    With ``verbose`` False, transformers logs errors only and draws no weight-loading
    bar. With ``verbose`` True the libraries keep their own defaults. Call it again to
    change the choice.
    """
    global _verbose
    _verbose = verbose
    for apply in _appliers:
        apply(verbose)


def is_verbose() -> bool:
    """Whether third-party libraries may print (False also before ``configure_output``)."""
    return bool(_verbose)


def when_configured(apply: Callable[[bool], None]) -> None:
    """Call ``apply(verbose)`` on every ``configure_output``, and now if it has run already.

    For the modules that talk to a library: they register when they are imported, so
    the library is configured only once something has imported it.
    """
    _appliers.append(apply)
    if _verbose is not None:
        apply(_verbose)
