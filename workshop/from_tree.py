"""Run the ``diffill`` command from a source tree that is not installed:
``python3 workshop/from_tree.py train ...``. The GPU recipe runs this way on the device's own
Python, where nothing is installed (``make gpu-train``): a developer command goes straight to
the workshop, which needs torch, transformers, tokenizers and safetensors but not what only
the editor side uses (pygls, lsprotocol, cattrs)."""

import sys
import types
from pathlib import Path

if __name__ == "__main__":
    # The tree's root stands in for the installed diffill package: diffill.server is
    # ROOT/server, as the package-dir mapping of pyproject.toml installs it.
    package = types.ModuleType("diffill")
    package.__path__ = [str(Path(__file__).resolve().parents[1])]
    sys.modules["diffill"] = package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

    from diffill.server.options import WORKSHOP, command_of
    if command_of(sys.argv[1:]) in WORKSHOP:
        from diffill.workshop.commands import main
    else:
        from diffill.server.cli import main
    sys.exit(main())
