"""gdmd's built-in plugins, registered through the same hooks as third-party ones.

:data:`gdmd.manager.DEFAULT_PLUGINS` lists them. Each module must import cheaply: no torch
at module level, only inside factories.
"""
