"""Tests that would pass whichever way the code behaves, caught by reading the test sources.

- `pytest.raises(Exception)` (or BaseException) passes on any error, the wrong one included:
  name the exception type the code promises.
- A fixed sleep (`time.sleep(0.5)`, `page.wait_for_timeout(500)`, `asyncio.sleep(1)`) before
  asserting that something did not happen proves nothing on a slow machine: wait for an
  event, or assert the final state once the work is known to be done. A sleep that paces a
  poll with a deadline, or stands for slow work, is fine: the line says so with a comment
  `# sleep-ok: <why>`.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

BROAD_RAISES = re.compile(r"\braises\(\s*(?:builtins\.)?(?:Base)?Exception\s*[,)]")
FIXED_SLEEP = re.compile(
    r"(?<![\w.])(?:time\.|asyncio\.|anyio\.|trio\.)?sleep\(\s*[\d_.]+\s*[,)]"
    r"|\bwait_for_timeout\(\s*[\d_.]+\s*[,)]"
)
ALLOW_COMMENT = re.compile(r"#\s*sleep-ok:\s*\S.{7,}")  # a reason of a few words, not a tick


def violations(path: str, text: str) -> list[str]:
    """'path:line: what is wrong' for each offending line of one test file's source."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0].strip()
        if BROAD_RAISES.search(line):
            found.append(f"{path}:{number}: pytest.raises(Exception) accepts any error: {code}")
        if FIXED_SLEEP.search(line) and not ALLOW_COMMENT.search(line):
            found.append(f"{path}:{number}: a fixed sleep without '# sleep-ok: why': {code}")
    return found


def test_no_test_accepts_any_exception_or_sleeps_to_prove_an_absence() -> None:
    this = Path(__file__).resolve()
    found = [
        problem
        for file in sorted(TESTS.rglob("*.py"))
        if file.resolve() != this
        for problem in violations(file.relative_to(ROOT).as_posix(), file.read_text())
    ]
    assert found == [], "\n".join(found)


def test_the_check_names_each_offending_line() -> None:
    source = "\n".join(
        [
            "with pytest.raises(Exception):",
            "with pytest.raises(BaseException, match='x'):",
            "with pytest.raises(ExceptionGroup):",  # a named type: fine
            "with pytest.raises(UserError):",
            "time.sleep(0.5)",
            "page.wait_for_timeout(500)  # time for the answer to arrive",
            "await asyncio.sleep(1)",
            "sleep(2)",
            "time.sleep(0.05)  # sleep-ok: paces a poll with a deadline",
            "time.sleep(0.05)  # sleep-ok:",  # no reason given
            "time.sleep(delay)",  # not a constant
            "page.wait_for_function('window.done')",
        ]
    )
    lines = [int(problem.split(":")[1]) for problem in violations("t.py", source)]
    assert lines == [1, 2, 5, 6, 7, 8, 10]
