"""The ``mrtoct`` subcommands, one file each: ``add_parser(sub)`` declares the flags, ``run(args)`` does the job.

Module level code here and in every command file imports no torch: building the parser (``mrtoct --help``) stays
fast; each ``run`` imports what it needs.
"""

from . import demo, devices, evaluate, export, info, phantom, register, synthesize, train

#: in the order ``mrtoct --help`` lists them
COMMANDS = (phantom, register, synthesize, evaluate, info, devices, export, train, demo)
