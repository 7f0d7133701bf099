"""The `fxprune` command line: `main` parses and dispatches; `models` resolves MODEL specs, `runs` the
commands that read run directories, `demo` the README's main job."""
from fxprune.cli.main import main

__all__ = ["main"]
