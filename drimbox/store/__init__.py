"""Instance files on disk and their entry into the index."""
