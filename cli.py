"""The command line's helpers: one-line user errors (exit code 2), the parsers of the
commands, the seed range they accept."""
import argparse
import os
import sys

MAX_SEED = 2 ** 32 - 1  # numpy's seed range (np.random.seed): 0 to 2^32 - 1


def fail(message, prog=None):
    """A user error: one line on stderr naming the script, then exit code 2. The line is one
    write (print writes the newline apart): under MPI, another process's output cannot land
    inside it."""
    sys.stderr.write('{}: error: {}\n'.format(prog or os.path.basename(sys.argv[0]), message))
    sys.exit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, with no usage dump."""

    def error(self, message):
        fail(message, self.prog)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each option's default (when it has one that its text does not already
    give), and the description and examples as written."""

    def _get_help_string(self, action):
        text = action.help or ''
        if (action.default is None or action.default is argparse.SUPPRESS or action.nargs == 0
                or 'default' in text or not action.option_strings):
            return text
        return text + ' (default: %(default)s)'


def command_parser(doc):
    """The parser of a command whose module docstring `doc` starts with a paragraph that
    describes it and a paragraph of example command lines (shown after the options)."""
    paragraphs = doc.split('\n\n')
    return OneLineParser(description=paragraphs[0], epilog='examples:\n' + paragraphs[1],
                         formatter_class=DefaultsHelpFormatter)


def check_seed(seed, flag='--seed'):
    """One line and exit 2 unless `seed` is in numpy's seed range, 0 to MAX_SEED."""
    if seed < 0:
        fail('{} {}: must be an integer >= 0'.format(flag, seed))
    if seed > MAX_SEED:
        fail('{} {}: must be at most {} (numpy\'s seed range)'.format(flag, seed, MAX_SEED))
