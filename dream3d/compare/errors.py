"""The one-line errors of ``dream3d compare`` and its report (the command line prints them, exit code 2)."""

from __future__ import annotations

from dream3d.errors import Dream3DError


class CompareError(Dream3DError, ValueError):
    """Bad compare input: one line naming the key or folder."""


class ReportError(Dream3DError, ValueError):
    """Bad input for a comparison report: the message is one line naming the file or argument."""
