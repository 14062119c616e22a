"""Settings of the HL7 intake and the order-to-image loop: env, TOML, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.config import load_settings


def test_defaults_keep_hl7_off_and_linking_on() -> None:
    settings = load_settings(None, {})
    assert (settings.hl7_enabled, settings.hl7_port) == (False, 2575)
    assert settings.worklist_link_on_store is True
    assert settings.worklist_complete_on_store == "never"


def test_environment_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nhl7_enabled = true\nworklist_complete_on_store = "first-instance"\n'
    )
    settings = load_settings(
        config, {"DICOMWEB_HL7_PORT": "2600", "DICOMWEB_WORKLIST_LINK_ON_STORE": "false"}
    )
    assert (settings.hl7_enabled, settings.hl7_port) == (True, 2600)
    assert settings.worklist_complete_on_store == "first-instance"
    assert settings.worklist_link_on_store is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DICOMWEB_HL7_PORT": "70000"}, "hl7_port"),
        ({"DICOMWEB_HL7_ENABLED": "true", "DICOMWEB_HL7_PORT": "8042"}, "must differ"),
        ({"DICOMWEB_HL7_MAX_CONNECTIONS": "0"}, "hl7_max_connections"),
        ({"DICOMWEB_HL7_MAX_MESSAGE_BYTES": "10"}, "hl7_max_message_bytes"),
        ({"DICOMWEB_HL7_IDLE_TIMEOUT": "0"}, "hl7_idle_timeout"),
        ({"DICOMWEB_WORKLIST_COMPLETE_ON_STORE": "sometimes"}, "worklist_complete_on_store"),
        ({"DICOMWEB_HL7_ALLOWED_PEERS": "10.0.0.0/8,his.example"}, "hl7_allowed_peers"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(None, env)
