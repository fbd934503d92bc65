"""fpdsl's configs: shipped in the package as fpdsl.conf (fpdsl/conf links here)."""
