"""`medr1 submit` refuses to upload files that look like secrets unless excluded or forced."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cluster import upload
from cluster.errors import JobsError
from cluster.secret_files import secret_reason
from pipelines import submission

REPO = Path(__file__).resolve().parents[1]
PEM = "-----BEGIN RSA PRIVATE " + "KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE " + "KEY-----\n"


@pytest.mark.parametrize("rel", [
    ".env", ".env.production", "deploy/.envrc", "id_rsa", "keys/id_ed25519", "tls/server.pem", "tls.key",
    "store.p12", "auth_token", ".ray/auth_token", "hf_token.txt", "secrets/api-token", ".aws/credentials",
    ".aws/config", ".kube/config", ".ssh/known_hosts", ".docker/config.json", ".netrc", ".git-credentials",
    "credentials.json", "client_secret.json",
])
def test_secret_names(rel):
    assert secret_reason(rel), rel


@pytest.mark.parametrize("rel", [
    ".env.example", ".env.sample", "id_rsa.pub", ".ssh/id_ed25519.pub", "tokenizer.json", "special_tokens_map.json",
    "tokenizer_config.json", "learner/tokens.py", "README.md", "configs/smoke.yaml", "keys.py", "monkey.txt",
    "config.json", "pipelines/data/store.py",
])
def test_ordinary_names(rel):
    assert secret_reason(rel) is None, rel


def test_secret_content_in_small_files(tmp_path):
    sa = tmp_path / "my-project-1234.json"
    sa.write_text(json.dumps({"type": "service_account", "private_key": PEM, "client_email": "x@y"}))
    assert "service-account key" in secret_reason(sa.name, sa)
    notes = tmp_path / "notes.txt"
    notes.write_text("server key:\n" + PEM)
    assert "PEM private key" in secret_reason(notes.name, notes)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"private_key_path": "/vault/key"}))  # mentions, does not hold, a key
    assert secret_reason(plain.name, plain) is None


def _project(tmp_path) -> Path:
    """The smallest working dir prepare_submission accepts: the CLI entry and a config."""
    wd = tmp_path / "wd"
    (wd / "pipelines" / "cli").mkdir(parents=True)
    (wd / "pipelines" / "cli" / "main.py").write_text("")
    (wd / "configs").mkdir()
    shutil.copy(REPO / "configs" / "smoke.yaml", wd / "configs" / "smoke.yaml")
    return wd


def test_submit_refuses_secrets_unless_excluded_or_forced(tmp_path):
    wd = _project(tmp_path)
    (wd / ".env").write_text("OPENAI_API_KEY=sk-123\n")
    (wd / "deploy").mkdir()
    (wd / "deploy" / "id_rsa").write_text(PEM)
    (wd / "deploy" / "id_rsa.pub").write_text("ssh-rsa AAAA")
    args = dict(working_dir=wd, storage_path=str(tmp_path / "runs"))
    config = str(wd / "configs" / "smoke.yaml")
    with pytest.raises(JobsError, match=r"holds 2 file\(s\) that look like secrets") as e:
        submission.prepare_submission(config, [], **args)
    assert ".env  (an environment file" in str(e.value) and "deploy/id_rsa  (an SSH private key)" in str(e.value)
    assert "id_rsa.pub" not in str(e.value) and "--allow-secrets" in str(e.value)
    with pytest.raises(JobsError, match="holds 1 file"):  # one left out: the other still refused
        submission.prepare_submission(config, [], extra_excludes=["/.env"], **args)
    sub = submission.prepare_submission(config, [], extra_excludes=["/.env", "id_rsa"], **args)
    assert sub.upload.num_files == 3  # main.py, smoke.yaml, id_rsa.pub: nothing secret
    sub = submission.prepare_submission(config, [], allow_secrets=True, **args)
    assert sub.upload.num_files == 5  # and .env, id_rsa
    with pytest.raises(JobsError, match="look like secrets"):  # also without the size check
        submission.prepare_submission(config, [], check_size=False, **args)


def test_gitignored_secrets_are_not_uploaded_so_not_refused(tmp_path):
    wd = _project(tmp_path)
    (wd / ".env").write_text("TOKEN=1\n")
    (wd / ".gitignore").write_text(".env\n")  # Ray leaves .gitignore'd files out of the upload
    upload.check_working_dir(wd, upload.DEFAULT_EXCLUDES)


def test_cli_has_the_flag():
    from pipelines.cli.main import build_parser

    args = build_parser().parse_args(["submit", "configs/smoke.yaml", "--allow-secrets"])
    assert args.allow_secrets is True
    assert build_parser().parse_args(["submit", "configs/smoke.yaml"]).allow_secrets is False


def test_the_ray_token_is_never_printed_or_sent(tmp_path, monkeypatch, capsys):
    from pipelines.cli.main import main

    token = "tok-" + "5f1c9a7e3b" * 3
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    wd = _project(tmp_path)
    rc = main(["submit", str(wd / "configs" / "smoke.yaml"), "--working-dir", str(wd), "--dry-run",
               "--storage-path", str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert rc == 0 and "entrypoint:" in out.out
    assert token not in out.out + out.err
    with pytest.raises(JobsError, match="RAY_AUTH_TOKEN: not sent with a job"):
        upload.build_runtime_env(wd, env_vars={"RAY_AUTH_TOKEN": token})
