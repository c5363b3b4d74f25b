"""The ``mixquant`` command line, one module per command, over mixquant_core (and mixquant_viz for
the report). ``main`` builds the parser from the command modules and dispatches; the commands
share ``options`` (argparse types and argument groups), ``output`` (tables, notices, the one-line
error), ``progress`` (bars or stage lines on stderr) and ``inputs`` (Workspace, images, plans).
Nothing here imports torch at import time: the core is imported inside the commands that use it.
Imports mixquant_core and mixquant_viz only."""
