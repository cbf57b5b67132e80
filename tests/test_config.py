"""Configuration: defaults, validation, and errors that name the file, the key and the fix."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from segue import config
from segue.config import ConfigError, Listen, parse_listen

EXAMPLE = Path(__file__).parent.parent / "etc" / "segue" / "segued.toml"


def load_text(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "segued.toml"
    path.write_text(text)
    return config.load(path)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value.errors


def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "")
    assert settings.http.listen == Listen("127.0.0.1", 8480)
    assert settings.packer.chunk_size == 256 * 1024
    assert settings.store.path == (tmp_path / "store").resolve()
    assert settings.auth.audience == "segue"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    settings = load_text(tmp_path, '[seal]\nedge_keys = ["k/a.pem", "/abs/b.pem"]\n')
    assert settings.seal.edge_keys == ((tmp_path / "k" / "a.pem").resolve(), Path("/abs/b.pem"))


@pytest.mark.parametrize(("text", "expected"), [
    ("[http]\nlisen = 'x'\n", r"unknown key http.lisen; did you mean 'listen'"),
    ("[catalog]\n", r"unknown section \[catalog\]; did you mean 'catalogue'"),
    ("[http]\nmax_header_bytes = 'big'\n", r"http.max_header_bytes: expected an integer"),
    ("[http]\nmax_header_bytes = 0\n", r"http.max_header_bytes: must be greater than 0"),
    ("[http]\nlisten = '127.0.0.1'\n", r"http.listen: .* is not HOST:PORT"),
    ("[http]\nlisten = '127.0.0.1:99999'\n", r"http.listen: .*outside 0-65535"),
    ("[log]\nformat = 'xml'\n", r"log.format: 'xml' is not one of auto, json, console"),
    ("[seal]\nedge_keys = 'one.pem'\n", r"seal.edge_keys: expected a list of file paths"),
    ("[limits]\nworker_threads = true\n", r"limits.worker_threads: expected an integer"),
    ("[http]\ncors_origins = 'https://a.example'\n",
     r"http.cors_origins: expected a list of origins"),
    ("[http]\ncors_origins = ['https://A.example/']\n",
     r"http.cors_origins: 'https://A.example/' is not an origin.*write 'https://a.example'"),
    ("[http]\ncors_origins = ['https://a.example:443']\n",
     r"http.cors_origins: .*no default port.*write 'https://a.example'"),
    ("[http]\ncors_origins = ['ftp://a.example']\n", r"cors_origins: 'ftp://a.example' is not"),
    ("[http]\ncors_origins = ['*', 'https://a.example']\n", r"http.cors_origins: \"\*\" .*alone"),
    ("http = 3\n", r"http must be a table"),
    ("[http\n", r"not valid TOML"),
])
def test_errors_name_file_key_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    (error,) = errors_of(tmp_path, text)
    assert error.startswith(str(tmp_path / "segued.toml") + ": ")
    assert re.search(expected, error), error


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "[http]\nlisen = 1\nmax_connections = -1\n[lg]\n")
    assert len(errors) == 3


def test_cors_is_off_by_default_and_takes_origins_as_browsers_send_them(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").http.cors_origins == ()
    text = '[http]\ncors_origins = ["https://player.example.net", "http://[::1]:8080"]\n'
    assert load_text(tmp_path, text).http.cors_origins == ("https://player.example.net",
                                                           "http://[::1]:8080")
    assert load_text(tmp_path, '[http]\ncors_origins = ["*"]\n').http.cors_origins == ("*",)


def test_listen_forms() -> None:
    assert parse_listen("[::1]:8480") == Listen("::1", 8480)
    assert str(Listen("::1", 8480)) == "[::1]:8480"
    assert parse_listen("0.0.0.0:0") == Listen("0.0.0.0", 0)


def test_the_example_config_is_valid_and_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    # Every key appears, set or commented out, in its own section.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    parsed = tomllib.loads(uncommented)
    for section, keys in config.SCHEMA.items():
        assert set(parsed.get(section, {})) == set(keys), section
    settings = config.from_mapping(tomllib.loads(text), EXAMPLE)
    assert settings.http.listen == Listen("127.0.0.1", 8480)
