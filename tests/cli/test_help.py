"""Every CLI option says what it does and lists its choices; ``--version``; the client's defaults are the CLI's."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import typer.main
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.client import OodsynthClient

runner = CliRunner()


def commands():
    """(command path, click command) for every command, groups (``plot``) walked."""
    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [(f"{name} {sub}", c) for sub, c in subs.items()] if subs else [(name, cmd)]
    return out


def param(path: str, name: str):
    (cmd,) = [c for p, c in commands() if p == path]
    (found,) = [p for p in cmd.params if p.name == name]
    return found


def test_every_option_and_argument_has_help():
    found = [(path, p.name) for path, cmd in commands() for p in cmd.params]
    assert len(found) > 100  # every command is walked, plot's subcommands too
    missing = [(path, p.name) for path, cmd in commands() for p in cmd.params if not (getattr(p, "help", "") or "")]
    assert not missing, missing


def choices_in(help_text: str, choices) -> bool:
    return all(choice in help_text for choice in choices)


def test_options_with_fixed_choices_list_them_all():
    from oodsynth.api_keys import SCOPES
    from oodsynth.cli.export import FORMATS, OPENOOD_LABELS
    from oodsynth.decoding.presets import PRESETS, SCHEDULERS
    from oodsynth.densities import DENSITY_KINDS
    from oodsynth.export import EXPORTERS
    from oodsynth.export.card import SOURCE_LICENSES
    from oodsynth.export.openood import LABELS
    from oodsynth.offline_decoder.training import PROFILES
    from oodsynth.samplers import SAMPLERS

    assert tuple(FORMATS) == tuple(EXPORTERS) and OPENOOD_LABELS == LABELS  # the help's copies stay in step
    for path, name, choices in [
        ("fit", "density", DENSITY_KINDS),
        ("sample", "method", SAMPLERS),
        ("generate", "scheduler", SCHEDULERS),
        ("generate", "preset", PRESETS),
        ("export", "format", EXPORTERS),
        ("export", "openood_label", LABELS),
        ("export", "id_dataset", SOURCE_LICENSES),
        ("train-decoder", "profile", PROFILES),
        ("api-key", "scope", SCOPES),
    ]:
        assert choices_in(param(path, name).help, choices), (path, name, param(path, name).help)


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output == f"oodsynth {version('oodsynth')}\n"


def test_the_clients_defaults_are_the_clis():
    sample = inspect.signature(OodsynthClient.sample).parameters
    assert sample["method"].default == param("sample", "method").default == "boundary_crossing"
    assert inspect.signature(OodsynthClient.sample_npz).parameters["method"].default == sample["method"].default
    assert inspect.signature(OodsynthClient.fit).parameters["density"].default == param("fit", "density").default
    assert inspect.signature(OodsynthClient.wait).parameters["timeout"].default is param("wait", "timeout").default
    from oodsynth.errors import InputError

    with pytest.raises(InputError) as exc:  # no default count, like --n-per-class; refused before any request
        OodsynthClient("http://127.0.0.1:9").sample("fit")
    assert exc.value.field == "n_per_class"


def test_generate_defaults_are_the_servers():
    """``client.generate`` sends only what it is given, so the server's defaults apply: the CLI's must be the same."""
    from oodsynth.service import GenerateRequest

    (cmd,) = [c for p, c in commands() if p == "generate"]
    fields = GenerateRequest.model_fields
    compared = {p.name for p in cmd.params if p.name in fields and not fields[p.name].is_required()}
    assert {"steps", "guidance_scale", "height", "width", "output_size", "scheduler", "preset"} <= compared
    for name in compared:
        cli_default = param("generate", name).default
        assert cli_default == fields[name].default, (name, cli_default, fields[name].default)
