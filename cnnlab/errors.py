"""The one exception type for user mistakes: the CLI prints it as one line and exits with code 2."""


class CnnlabError(Exception):
    """A bad input the user can fix (config value, path, file, checkpoint). Bugs raise anything else."""
