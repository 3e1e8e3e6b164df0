"""The installed package (setup.py): its console commands and the files it carries. The
whole install is checked by .ci/wheel (a wheel in a fresh virtual environment)."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import commands  # noqa: E402

pytestmark = pytest.mark.slow  # builds and runs the package in subprocesses (python -m pytest -m "not slow" leaves it out)


def setup_value(name):
    """The literal assigned to `name` at the top of setup.py."""
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    return next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == name)


def test_every_command_runs_an_installed_module_with_a_main_block():
    for name, module in setup_value('COMMANDS').items():
        assert module in setup_value('MODULES') and callable(getattr(commands, module)), name
        assert "\nif __name__ == '__main__':\n" in open(os.path.join(ROOT, module + '.py')).read(), module


def test_the_package_carries_every_c_source():
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'setup')
    package_data = next(k.value for k in call.keywords if k.arg == 'package_data')
    carried = ast.literal_eval(package_data.values[0])
    assert sorted(carried) == sorted(f for f in os.listdir(ROOT) if f.endswith('.c'))


def test_a_command_runs_its_module_from_another_folder(tmp_path):
    """commands.py loaded as the installed package's module, in a folder where the bare
    module names are not on sys.path: the command runs its module with the siblings beside it."""
    code = ('import importlib.util, sys\n'
            'spec = importlib.util.spec_from_file_location("diffusion_thermodynamics.commands", {!r})\n'
            'cmd = importlib.util.module_from_spec(spec); spec.loader.exec_module(cmd)\n'
            'sys.argv = ["diffusion-report", "--help"]\n'
            'try:\n'
            '    cmd.report()\n'
            'except SystemExit as e:\n'
            '    print(e.code, sys.modules["backend"].__file__)\n').format(os.path.join(ROOT, 'commands.py'))
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=''),
                       capture_output=True, text=True, timeout=600)
    assert r.stdout.startswith('usage: report.py'), r.stderr
    assert r.stdout.splitlines()[-1] == '0 ' + os.path.join(ROOT, 'backend.py')


def test_an_installed_package_inside_another_checkout_records_no_commit(monkeypatch):
    """A virtual environment may sit inside some git checkout: its commit is not the code's."""
    import provenance
    monkeypatch.setattr(provenance, 'PROJECT_DIR', os.path.join(ROOT, 'tests'))
    assert provenance.git_commit() == (None, None)
    assert provenance.code_source(None) == 'source folder'  # this provenance.py is no installed package's
    assert provenance.code_source('0123abc') == 'git checkout'
    if os.path.exists(os.path.join(ROOT, '.git')):
        monkeypatch.setattr(provenance, 'PROJECT_DIR', ROOT)
        commit, dirty = provenance.git_commit()
        assert len(commit) == 40 and dirty in (True, False)
