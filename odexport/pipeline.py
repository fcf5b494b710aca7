"""Composes the stages: checkpoint -> torch model -> deploy model -> export -> runtime -> report.

The only module that knows every stage. Each function here is a thin composition of library
calls; the work happens in the stage packages.  Data flows one way: no stage calls back up.
"""

from __future__ import annotations
