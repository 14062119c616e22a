"""Settings: defaults < TOML file < environment < explicit overrides, and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.config import Settings, env_name, load_settings, to_environ


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_with_an_empty_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8042
    assert settings.data_dir == Path("data")
    assert settings.database_url is None
    assert settings.effective_database_url == f"sqlite:///{Path('data').resolve()}/index.sqlite3"
    assert settings.insecure is False


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    config = write(
        tmp_path / "a.toml",
        """
[server]
port = 9001
workers = 3
data_dir = "/from/file"
duplicate_policy = "reject"
qido_max_limit = 50
""",
    )
    env = {
        "DICOMWEB_PORT": "9002",
        "DICOMWEB_DATA_DIR": "/from/env",
        "DICOMWEB_QIDO_MAX_LIMIT": "70",
    }
    settings = load_settings(config, env, port=9003)
    assert settings.port == 9003  # flag beats env beats file
    assert settings.data_dir == Path("/from/env")  # env beats file
    assert settings.qido_max_limit == 70
    assert settings.workers == 3  # file beats default
    assert settings.duplicate_policy == "reject"
    assert settings.host == "127.0.0.1"  # default
    # An override of None means "flag not given": it does not hide lower layers.
    assert load_settings(config, env, port=None).port == 9002
    assert load_settings(config, {}, port=None).port == 9001


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'port = 9100\ndatabase_url = "sqlite:///x.db"\n')
    settings = load_settings(None, {"DICOMWEB_CONFIG": str(config)})
    assert (settings.port, settings.database_url) == (9100, "sqlite:///x.db")
    # An explicit file wins over the variable.
    other = write(tmp_path / "d.toml", "port = 9200\n")
    assert load_settings(other, {"DICOMWEB_CONFIG": str(config)}).port == 9200
    # Set but empty: no file.
    assert load_settings(None, {"DICOMWEB_CONFIG": ""}).port == 8042


def test_top_level_keys_and_server_section_merge(tmp_path: Path) -> None:
    config = write(
        tmp_path / "m.toml",
        'port = 9300\nhost = "::1"\n[server]\nport = 9301\nduplicate-policy = "replace"\n',
    )
    settings = load_settings(config, {})
    assert settings.port == 9301  # [server] wins
    assert settings.host == "::1"  # top-level key still read
    assert settings.duplicate_policy == "replace"  # dashes accepted


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1\n", "unknown setting 'prot'"),
        ("[server]\nport = 'x'\n", "port must be an integer"),
        ("[server]\nport = true\n", "port must be an integer"),
        ("insecure = 'maybe'\n", "insecure must be true or false"),
        ("port = [\n", "not valid TOML"),
        ("server = 3\n", "must be a table"),
        ("duplicate_policy = 'sometimes'\n", "duplicate_policy must be one of"),
        ("blob_sync = 'never'\n", "blob_sync must be one of syncfs, fsync"),
        ("trusted_proxies = ['not-an-address']\n", "trusted_proxies"),
        ("log_level = 'verbose'\n", "log_level must be one of"),
        ("port = 70000\n", "out of range"),
        ("workers = 0\n", "workers must be at least 1"),
        ("qido_max_limit = 0\n", "qido_max_limit must be at least 1"),
        ("dicomweb_root = 'dicom-web/'\n", "dicomweb_root"),
    ],
)
def test_bad_config_files_are_clear_value_errors(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match=message):
        load_settings(config, {})


def test_missing_config_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", {})
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings(None, {"DICOMWEB_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DICOMWEB_PORT", "eighty", "DICOMWEB_PORT: port must be an integer"),
        ("DICOMWEB_PORT", "", "DICOMWEB_PORT: port must be an integer"),
        ("DICOMWEB_INSECURE", "sure", "DICOMWEB_INSECURE: insecure must be true or false"),
        ("DICOMWEB_DATA_DIR", "", "DICOMWEB_DATA_DIR: data_dir must be a non-empty path"),
    ],
)
def test_bad_environment_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(None, {name: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("off", False)],
)
def test_boolean_environment_values(value: str, expected: bool) -> None:
    assert load_settings(None, {"DICOMWEB_INSECURE": value}).insecure is expected


def test_trusted_proxies_from_env_file_and_override(tmp_path: Path) -> None:
    env = {"DICOMWEB_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16 ,"}
    assert load_settings(None, env).trusted_proxies == ("10.0.0.1", "192.168.0.0/16")
    config = write(tmp_path / "p.toml", 'trusted_proxies = ["::1", "10.1.0.0/16"]\n')
    assert load_settings(config, {}).trusted_proxies == ("::1", "10.1.0.0/16")
    assert load_settings(config, {}, trusted_proxies="127.0.0.1").trusted_proxies == ("127.0.0.1",)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_settings(None, {}, prot=1)


def test_to_environ_round_trips(tmp_path: Path) -> None:
    """Worker processes rebuild the parent's Settings from the environment alone."""
    original = load_settings(
        None,
        {},
        host="::1",
        port=9400,
        data_dir=tmp_path / "d",
        workers=2,
        public_base_url="https://pacs.example/dicom-web",
        trusted_proxies="10.0.0.1,10.0.0.2",
        insecure=True,
        duplicate_policy="replace",
        log_level="warning",
    )
    env = to_environ(original)
    assert env[env_name("data_dir")] == str((tmp_path / "d").resolve())
    assert env_name("database_url") not in env  # None: "SQLite in the data folder"
    assert load_settings(None, env) == original
    # Empty tuple and False survive the trip too.
    assert load_settings(None, to_environ(Settings())) == Settings(data_dir=Path("data").resolve())


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert Settings(host=host).is_loopback_bind(), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not Settings(host=host).is_loopback_bind(), host


def test_database_url_for_display_hides_the_password() -> None:
    settings = Settings(database_url="postgresql+psycopg://pacs:s3cret@db/pacs?sslmode=require")
    assert settings.database_url_for_display == "postgresql+psycopg://pacs:***@db/pacs"
    assert "s3cret" not in settings.database_url_for_display


def test_blob_sync_defaults_to_syncfs_and_takes_fsync_from_the_environment() -> None:
    assert load_settings(None, {}).blob_sync == "syncfs"
    assert load_settings(None, {"DICOMWEB_BLOB_SYNC": "fsync"}).blob_sync == "fsync"
