"""Release numbers of installed packages, read the same way wherever a feature depends on one.

A package's ``__version__`` is text (``"10.13.0.35"``, ``"1.27.0.dev20250101"``, ``"11.0.0rc1"``);
the decisions compare its leading numeric components only.  Text with no leading number (a
package without a version attribute reports ``"unknown"``) reads as no release at all, which no
minimum admits: a feature that needs a known release is then not assumed.
"""

from __future__ import annotations

import re


def release_numbers(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; ``"11.0.0rc1"`` -> ``(11, 0, 0)``; ``"unknown"`` -> ``()``.

    Components are read up to the first that does not start with a digit; a component's trailing
    tag (``0rc1``, ``0+cu121``) ends the reading after its number."""
    numbers = []
    for part in str(text).strip().split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def version_at_least(version: str | tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """Whether ``version`` is ``minimum`` or later; missing components count as 0 (``"10"`` is
    ``10.0``), an unreadable version as older than any minimum."""
    parsed = release_numbers(version) if isinstance(version, str) else tuple(version)
    if not parsed:
        return False
    return parsed[: len(minimum)] + (0,) * max(0, len(minimum) - len(parsed)) >= minimum
