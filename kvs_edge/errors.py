"""The one error hierarchy and the exit codes of every command (README "Exit codes", docs/internals.md "Errors").

`KvsEdgeError` carries what a user reads (str(e): one line, what is wrong and what to do, never a secret) and the exit
code a command ends with when this error stops it. Anything that is not a KvsEdgeError reaching a command is a bug.

    KvsEdgeError (1)
    +-- UsageError (2)           a bad command line or an unusable input file given to a one-shot command
    +-- ConfigError (78)         config.py: the configuration file cannot work
    +-- CredentialsError (78)    kvs/credentials.py: AWS credentials cannot be found or fetched
    +-- ControlPlaneError (78 when the client cannot even be set up, else 1)   kvs/control.py
    +-- TransportError (1)       kvs/transport.py: a PutMedia request failed (retried by the uploader)
    +-- SourceError (1)          sources/base.py: the video source died (systemd restarts the service)
    |   +-- SourceNotInstalled (78)  a software package the source needs is missing: no restart can fix it
    +-- PipelineFailure (1, or its cause's code)   pipeline.py: a part of the pipeline died or stalled
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure (network, service, a thread that died): systemd restarts `run`
EXIT_USAGE = 2  # a bad command line or input; also check-config's "the file is invalid" verdict
EXIT_NOT_RUNNING = 3  # `kvs-edge status`: the service is not running (as LSB `status` actions)
EXIT_CONFIG = 78  # EX_CONFIG: the configuration cannot work; listed in the unit's RestartPreventExitStatus
EXIT_INTERRUPTED = 130  # Ctrl-C


def one_line(text: Any, limit: int = 240) -> str:
    """Text (an exception, a service's message) as one line of at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class KvsEdgeError(Exception):
    """An error meant for a user: str() is one line saying what is wrong and what to do; `exit_code` is how a command
    that stops on it exits (a subclass's default, or given per instance)."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return one_line(self.args[0] if self.args else type(self).__name__, 1000)


class UsageError(KvsEdgeError):
    """A bad command line or an input file a one-shot command cannot use."""

    exit_code = EXIT_USAGE
