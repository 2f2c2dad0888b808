"""The storage engine suite: real files in temporary directories, crash and corruption tests."""
