"""Data: built-in synthetic sets, vocabularies and resumable per-process batch iterators."""
