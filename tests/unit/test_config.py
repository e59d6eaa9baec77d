"""Settings: the shipped example loads; bad values fail at start naming the key, the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from drimbox.config import load_settings
from drimbox.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "drimbox.toml"

MINIMAL = """
mode = "demo"
[site]
structure_id = "123456789"
name = "Cabinet de radiologie"
[http]
public_base_url = "http://127.0.0.1:8080/"
[pacs.main]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
[auth]
introspection_url = "http://127.0.0.1:9000/introspect"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drimbox.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_example_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.mode == "production"
    assert settings.http.public_base_url.startswith("https://")
    assert settings.pacs, "the example documents at least one PACS peer"


def test_defaults_and_relative_data_folder(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, MINIMAL))
    assert settings.http.public_base_url == "http://127.0.0.1:8080"
    assert settings.store.folder == (tmp_path / "data").resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'drimbox.db'}"
    assert settings.dimse.ae_title == "DRIMBOX"
    assert settings.pacs["main"].retrieve == "c-get"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIMBOX_DIMSE__PORT", "11999")
    monkeypatch.setenv("DRIMBOX_PACS__MAIN__RETRIEVE", "c-move")
    settings = load_settings(_write(tmp_path, MINIMAL))
    assert settings.dimse.port == 11999
    assert settings.pacs["main"].retrieve == "c-move"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port = 4242", "port = 70000"), "pacs.main.port: Input should be less than or equal to 65535 — fix:"),
        (('ae_title = "ORTHANC"', 'ae_title = "FAR_TOO_LONG_TITLE"'), "ae_title: 'FAR_TOO_LONG_TITLE' is not"),
        (('host = "127.0.0.1"', 'hots = "127.0.0.1"'), "pacs.main.hots: unknown key"),
        (('mode = "demo"', 'mode = "prod"'), "mode: Input should be 'production' or 'demo'"),
        (('name = "Cabinet de radiologie"', ""), "site.name: missing"),
        (('mode = "demo"', 'mode = "production"'), "http.public_base_url: must be https in production"),
    ],
)  # fmt: skip
def test_invalid_values_name_the_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = _write(tmp_path, MINIMAL.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_environment_value_is_validated_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIMBOX_HTTP__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"http.port: .* \(or set DRIMBOX_HTTP__PORT\)"):
        load_settings(_write(tmp_path, MINIMAL))


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "mode = "))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "absent.toml")


def test_peer_lookup_lists_known_peers(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=r"unknown PACS peer 'other' \(known: main\)"):
        settings.peer("other")


def test_production_refuses_secrets_written_in_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("[dmp]\n", '[dmp]\nauth_password = "s3cret"\n', 1)
    with pytest.raises(ConfigError, match="DRIMBOX_DMP__AUTH_PASSWORD"):
        load_settings(_write(tmp_path, text))
    monkeypatch.setenv("DRIMBOX_DMP__AUTH_PASSWORD", "s3cret")
    assert load_settings(EXAMPLE).dmp.auth_password == "s3cret"


def test_private_keys_readable_by_others_are_named(tmp_path: Path) -> None:
    from drimbox.config import private_key_problems

    key = tmp_path / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    (tmp_path / "server.crt").write_text("")
    text = MINIMAL + '[http.tls]\ncertificate = "server.crt"\nkey = "server.key"\n'
    settings = load_settings(_write(tmp_path, text))
    assert [p.split(":")[0] for p in private_key_problems(settings)] == [str(key)]
    key.chmod(0o600)
    assert private_key_problems(settings) == []


def test_production_introspection_needs_our_certificate(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace('client_certificate = "', '# client_certificate = "', 1)
    text = text.replace('client_key = "', '# client_key = "', 1)
    with pytest.raises(ConfigError, match="ORG_AUTH_CLI"):
        load_settings(_write(tmp_path, text))
