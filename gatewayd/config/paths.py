"""Where gatewayd looks for its config file and keeps its state, per platform.

Every function takes the environment (and the platform) as arguments so that callers and tests decide what
they see; nothing here touches the file system except ``resolve_config_path``, which asks whether the
default config file exists.

    config file:  explicit path  >  $GATEWAYD_CONFIG  >  the default path if that file exists  >  defaults
    state dir:    explicit path  >  $GATEWAYD_STATE_DIR  >  the default directory

    Linux (and other platforms that are not macOS):
      config file       $XDG_CONFIG_HOME/gatewayd/config.yaml   (default ~/.config/gatewayd/config.yaml)
      state directory   $XDG_STATE_HOME/gatewayd                (default ~/.local/state/gatewayd)
    macOS:
      config file       ~/Library/Application Support/gatewayd/config.yaml
      state directory   ~/Library/Application Support/gatewayd/state
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP_NAME = "gatewayd"
CONFIG_FILE_NAME = "config.yaml"
CONFIG_ENV = "GATEWAYD_CONFIG"
STATE_DIR_ENV = "GATEWAYD_STATE_DIR"


def default_config_path(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """The config file used when neither ``--config`` nor ``$GATEWAYD_CONFIG`` names one."""
    if platform == "darwin":
        return _macos_app_dir(environ) / CONFIG_FILE_NAME
    return _xdg_dir(environ, "XDG_CONFIG_HOME", ".config") / APP_NAME / CONFIG_FILE_NAME


def default_state_dir(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """The directory for the lock file, pid and diagnostics when no other is named."""
    if platform == "darwin":
        return _macos_app_dir(environ) / "state"
    return _xdg_dir(environ, "XDG_STATE_HOME", ".local/state") / APP_NAME


def resolve_config_path(
    explicit: str | None, environ: Mapping[str, str] = os.environ, platform: str = sys.platform
) -> Path | None:
    """The config file to load, as an absolute path, or None to run on the built-in defaults.

    An explicit path or ``$GATEWAYD_CONFIG`` is returned whether or not it exists (loading a missing file
    is an error the loader reports); the default path only when that file exists.
    """
    if explicit:
        return _absolute(explicit)
    if environ.get(CONFIG_ENV):
        return _absolute(environ[CONFIG_ENV])
    default = default_config_path(environ, platform)
    return default if default.is_file() else None


def resolve_state_dir(
    explicit: str | None, environ: Mapping[str, str] = os.environ, platform: str = sys.platform
) -> Path:
    """The state directory to use, as an absolute path. It is not created here."""
    if explicit:
        return _absolute(explicit)
    if environ.get(STATE_DIR_ENV):
        return _absolute(environ[STATE_DIR_ENV])
    return default_state_dir(environ, platform)


def _absolute(path: str) -> Path:
    # Absolute, so that a respawned child or a service manager with another working directory finds it.
    return Path(path).expanduser().absolute()


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    # The XDG spec says a relative path in these variables is invalid and must be ignored.
    value = environ.get(variable, "")
    if value and Path(value).is_absolute():
        return Path(value)
    return _home(environ) / fallback


def _macos_app_dir(environ: Mapping[str, str]) -> Path:
    return _home(environ) / "Library" / "Application Support" / APP_NAME
