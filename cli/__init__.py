"""gradsal.cli: the ``gradsal`` command line."""
