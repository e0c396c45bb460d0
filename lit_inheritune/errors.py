"""Errors a person can act on: raised before compute is spent, reported as one `error:` line."""


class ConfigError(ValueError):
    """A request that cannot work, caught before any compute is spent."""
