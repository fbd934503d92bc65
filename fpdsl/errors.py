class ConfigError(ValueError):
    """Bad input found before any compute; printed as one line naming the key and the fix."""
