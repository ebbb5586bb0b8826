"""The fragment log: the on-disk ring buffer between the muxer and the uploader (see fragment_log.py)."""

from .fragment_log import FragmentGone, FragmentInfo, FragmentLog, LogInUse, LogStats

__all__ = ["FragmentLog", "FragmentInfo", "FragmentGone", "LogInUse", "LogStats"]
