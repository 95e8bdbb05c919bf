"""What every platform adapter shares: the request lifecycle, written once (see each module)."""
