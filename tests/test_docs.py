"""README.md and docs/*.md: the README stays one page, and every relative link and image of
the pages points to a file that exists."""
import glob
import os
import re

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
