"""The tree passes the style checks configured in setup.cfg (flake8, isort,
yapf), as `pre-commit run --all-files` would."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ['acmix_mm', 'configs', 'tests', 'tools']


@pytest.mark.parametrize(
    'command', [
        ['flake8'],
        ['isort', '--check-only', '--diff'],
        ['yapf', '--diff', '--recursive'],
    ],
    ids=lambda command: command[0])
def test_tree_passes(command):
    result = subprocess.run([sys.executable, '-m', *command, *CHECKED],
                            cwd=REPO,
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
