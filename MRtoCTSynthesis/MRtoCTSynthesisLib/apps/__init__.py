"""Layer 6, applications: the ``mrtoct`` command line, one file per subcommand, batch evaluation, figures, demo."""
