"""README.md and docs/*.md: the README stays one page, and every relative link and image of
the pages points to a file that exists; their commands use the flags the scripts have now."""
import argparse
import glob
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def relative_links(text):
    """The targets of [text](target) and ![alt](target) that are not URLs, without #anchors."""
    return [t.split('#')[0] for t in re.findall(r'\]\(([^)\s]+)\)', text) if '://' not in t and not t.startswith('#')]


def test_readme_is_one_page():
    with open(PAGES[0]) as f:
        assert len(f.read().splitlines()) <= 300


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        with open(page) as f:
            targets = relative_links(f.read())
        broken += ['{}: {}'.format(os.path.relpath(page, ROOT), t) for t in targets
                   if not os.path.exists(os.path.join(os.path.dirname(page), t))]
    assert not broken, 'links to files that do not exist: {}'.format(', '.join(broken))


def test_every_figure_in_docs_is_shown():
    shown = set()
    for page in PAGES:
        with open(page) as f:
            shown.update(os.path.basename(t) for t in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', f.read()))
    figures = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'docs', '*.png'))}
    assert figures <= shown, 'figures no page shows: {}'.format(sorted(figures - shown))


def test_every_image_of_the_docs_exists_and_results_md_names_its_command():
    """Each image that a page of docs/ shows is a file of the repository, and the figures
    table of docs/results.md gives the command that makes it (a cell with `python ...`)."""
    with open(os.path.join(ROOT, 'docs', 'results.md')) as f:
        commands = dict(re.findall(r'^\| (\S+\.png) \|.*\| (.*`python [^`]+`.*) \|$', f.read(), re.M))
    missing, without_command = [], []
    for page in PAGES[1:]:
        with open(page) as f:
            for target in re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)', f.read()):
                image = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(page), target)), ROOT)
                missing += [image] if not os.path.isfile(os.path.join(ROOT, image)) else []
                without_command += [image] if image not in commands else []
    assert not missing, 'images the docs show that do not exist: {}'.format(sorted(set(missing)))
    assert not without_command, 'images without a command in docs/results.md: {}'.format(sorted(set(without_command)))


def current_flags(parser):
    """The name of each option of an argparse parser: its first long spelling; the old
    spellings kept as hidden aliases (help=SUPPRESS) are left out."""
    return {next(o for o in a.option_strings if o.startswith('--')) for a in parser._actions
            if any(o.startswith('--') for o in a.option_strings) and a.help != argparse.SUPPRESS}


@pytest.mark.parametrize('script', ['train', 'evaluate', 'sampler', 'ceiling'])
def test_the_commands_of_the_pages_use_the_current_flags(script):
    flags = current_flags(importlib.import_module(script).build_parser())
    stale = []
    for page in PAGES:
        with open(page) as f:
            commands = re.findall(r'python {}\.py[^`|\n]*'.format(script), f.read())
        stale += ['{}: {} in `{}`'.format(os.path.relpath(page, ROOT), flag, command.strip())
                  for command in commands for flag in re.findall(r'--[A-Za-z][\w-]*', command) if flag not in flags]
    assert not stale, 'flags the command does not have (or only as an old name): {}'.format('; '.join(stale))
