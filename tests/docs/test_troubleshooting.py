"""docs/troubleshooting.md lists every error message odexport can raise (read from the source)."""

from __future__ import annotations

from tests.docs.error_catalogue import TROUBLESHOOTING, _cell, collect, current_catalogue, normalise


def test_catalogue_finds_the_errors():
    sites = collect()
    # the error boundary's classes are all used, and the catalogue is not trivially empty
    assert len(sites) > 50
    assert {s.exit_code for s in sites} == {1, 2, 3, 130}  # 130: a check stopped by Ctrl-C (143 for SIGTERM, set where it is raised)


def test_every_error_message_is_documented():
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    catalogue = current_catalogue(text)
    assert catalogue is not None, "troubleshooting.md lost its error-catalogue markers"
    documented = normalise(catalogue)
    missing = [f"{s.path}:{s.line}: {s.message}" for s in collect() if _cell(s.message) not in documented]
    assert not missing, (
        f"{len(missing)} error message(s) are not in docs/troubleshooting.md; run "
        "`python -m tests.docs.error_catalogue --write` (and explain new ones above the catalogue):\n"
        + "\n".join(missing[:20])
    )
