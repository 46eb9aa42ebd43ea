"""Logs under gunicorn with no logging set-up by the user.

gunicorn configures only its own loggers: the ``pixel_wsgi`` records would reach
Python's last-resort handler, which prints WARNING and above with no time or level
and drops the INFO lines for rejected requests. When the app is built inside gunicorn
and nobody configured logging, ``pixel_wsgi`` records are handed to gunicorn's error
log instead, so they come out with its time and level format, in its
``--error-logfile``, at its ``--log-level``.

Handing over at emit time (rather than copying gunicorn's handlers once) follows
gunicorn when it replaces its handlers on SIGHUP or reopens its files on SIGUSR1.
"""

from __future__ import annotations

import logging

from .logsafe import log_safe

GUNICORN_ERROR_LOGGER = "gunicorn.error"


class GunicornErrorLogHandler(logging.Handler):
    """Passes each record to gunicorn's error logger, if that one takes its level."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            # A record is one line even if a message forgot to escape a value.
            record.msg, record.args = log_safe(record.getMessage()), None
            self.target.handle(record)


def use_gunicorn_error_log(logger_name: str = "pixel_wsgi") -> bool:
    """Send ``logger_name`` records to gunicorn's error log when running under gunicorn
    and logging was not configured; ``True`` if it did (or had already)."""
    if GUNICORN_ERROR_LOGGER not in logging.Logger.manager.loggerDict:
        return False
    target = logging.getLogger(GUNICORN_ERROR_LOGGER)
    logger = logging.getLogger(logger_name)
    if any(isinstance(handler, GunicornErrorLogHandler) for handler in logger.handlers):
        return True
    if not target.handlers or logger.handlers or logging.getLogger().handlers:
        return False  # not gunicorn's logging set up, or the user set up their own
    logger.addHandler(GunicornErrorLogHandler(target))
    # gunicorn's --log-level decides, for our records as for its own.
    logger.setLevel(target.level)
    # The root logger has no handlers: stop records there, not at the last resort.
    logger.propagate = False
    return True
