"""core.secrets: the W&B mode rule shared by training runs and the report's summary run; secrets redacted."""

from glubench.core.secrets import redact, secret_values, wandb_mode


def test_wandb_mode_explicit_then_env_then_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(None) == "offline"  # no credentials anywhere
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)  # Python's netrc refuses a password file others can read
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"  # the environment beats credentials
    assert wandb_mode("offline") == "offline"  # the config beats both


def test_redact_hides_secret_env_values():
    env = {"WANDB_API_KEY": "abcdef0123456789", "MY_TOKEN": "tok-98765432", "TOKENIZERS_PARALLELISM": "false",
           "HOME": "/root/secretless"}
    secrets = secret_values(env)
    assert set(secrets) >= {"abcdef0123456789", "tok-98765432"} and "false" not in secrets
    assert "/root/secretless" not in secrets
    obj = {"a": ["x-abcdef0123456789-y", 3], "tok-98765432": {"b": "false"}}
    assert redact(obj, secrets) == {"a": ["x-***-y", 3], "***": {"b": "false"}}
