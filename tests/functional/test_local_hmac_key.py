"""In the local stage with no OPENDEVELOP_HMAC_KEY, the key is generated once into the state folder."""

from __future__ import annotations

import stat

from chalicelib.settings import Settings


def test_the_local_key_is_generated_once_private_and_reused(tmp_path):
    env = {"OPENDEVELOP_STATE_DIR": str(tmp_path / "state")}

    first = Settings.from_env(env)
    second = Settings.from_env(env)

    key_file = tmp_path / "state" / "hmac.key"
    assert first.hmac_key == second.hmac_key == key_file.read_text().strip().encode()
    assert len(first.hmac_key) == 64
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == ["hmac.key"]  # no temporary file left behind


def test_an_explicit_key_writes_nothing(tmp_path):
    settings = Settings.from_env({"OPENDEVELOP_STATE_DIR": str(tmp_path), "OPENDEVELOP_HMAC_KEY": "k" * 32})

    assert settings.hmac_key == b"k" * 32
    assert list(tmp_path.iterdir()) == []
