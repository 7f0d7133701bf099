"""The `fxprune` command line: `commands` parses and dispatches (`main` is its entry point); `models` resolves MODEL specs, `runs` the
commands that read run directories, `demo` the README's main job."""
from fxprune.cli.commands import main

__all__ = ["main"]
