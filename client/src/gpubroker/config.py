"""Where the API key and base URL come from: arguments, then the environment (``GPUBROKER_API_KEY``,
``GPUBROKER_URL``), then the config file ``$XDG_CONFIG_HOME/gpubroker/config.toml``
(``~/.config/gpubroker/config.toml``), which only its owner may read."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gpubroker.errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "GPUBROKER_API_KEY"
URL_ENV = "GPUBROKER_URL"
CONFIG_ENV = "GPUBROKER_CONFIG"


@dataclass(frozen=True)
class Settings:
    api_key: str | None
    url: str


def config_path() -> Path:
    """The config file: ``GPUBROKER_CONFIG`` if set, else under ``XDG_CONFIG_HOME`` (or ``~/.config``)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpubroker" / "config.toml"


def read_config(path: Path | None = None) -> dict[str, str]:
    path = path or config_path()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    return {key: value for key, value in data.items() if isinstance(value, str)}


def write_config(values: dict[str, str], path: Path | None = None) -> Path:
    """Merge ``values`` into the config file, created readable and writable by its owner only (0600)."""
    path = path or config_path()
    merged = read_config(path) | values
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in sorted(merged.items()))
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(temporary, 0o600)  # an existing file keeps its mode through O_CREAT
    os.replace(temporary, path)
    return path


def resolve(api_key: str | None = None, url: str | None = None) -> Settings:
    file = read_config() if not (api_key and url) else {}
    key = api_key or os.environ.get(API_KEY_ENV) or file.get("api_key") or None
    base = url or os.environ.get(URL_ENV) or file.get("url") or DEFAULT_URL
    if not base.startswith(("http://", "https://")):
        raise ConfigurationError(f"the API URL must start with http:// or https://, not {base!r}")
    return Settings(api_key=key, url=base.rstrip("/"))
