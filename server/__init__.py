"""The LSP server, the resident-model daemon and the command line.

Never touches a tensor: requests go to ``infill`` (in-process or inside the daemon).
"""
