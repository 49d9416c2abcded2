"""Every exception class callbot defines sits under `CallbotError`, found by walking the package.

Two are deliberately outside the tree and named here and in README (Layout, `callbot/errors.py`):
`ProtocolViolation`, the test double's assertion that an event breaks the Realtime protocol, and
`_Fatal`, the campaign runner's private signal to stop every row. Nothing else may be."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import callbot
from callbot import errors
from callbot.errors import CallbotError, LocalError

OUTSIDE = {"callbot.testing.protocol_check.ProtocolViolation", "callbot.cli_calls._Fatal"}
README = Path(__file__).resolve().parent.parent / "README.md"


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(callbot.__path__, "callbot."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI when imported
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_the_walk_finds_classes_in_every_layer() -> None:
    found = _exception_classes()
    assert "callbot.errors.CallbotError" in found
    assert "callbot.phone.devices.AudioDeviceError" in found
    assert "callbot.core.twilio._NotANumber" in found
    assert set(found) >= OUTSIDE


def test_every_exception_class_is_under_callbot_error_but_the_two_named() -> None:
    outside = {name for name, cls in _exception_classes().items() if not issubclass(cls, CallbotError)}
    assert outside == OUTSIDE


def test_the_phone_errors_are_local_and_keep_their_old_bases() -> None:
    from callbot.phone.devices import AudioDeviceError
    from callbot.phone.script import ScriptError

    assert issubclass(AudioDeviceError, LocalError)
    assert issubclass(ScriptError, LocalError)
    assert issubclass(ScriptError, ValueError)  # script.py's `except ValueError` wrappers still see it


def test_the_tree_in_the_errors_docstring_names_every_class_of_the_module() -> None:
    doc = errors.__doc__ or ""
    names = [n for n, o in vars(errors).items() if inspect.isclass(o) and issubclass(o, BaseException)]
    assert names and [n for n in names if n not in doc] == []


def test_readme_names_the_classes_outside_the_tree() -> None:
    text = README.read_text(encoding="utf-8")
    for dotted in OUTSIDE:
        assert f"`{dotted.rsplit('.', 1)[1]}`" in text
