import pytest

from runbook import credentials
from runbook.credentials import SecretParameterError


@pytest.mark.parametrize(
    "params",
    [
        {"api_key": "abc"},
        {"llama_token": "whatever-it-is"},
        {"pg_dsn": "postgresql://u:p@h/db"},
        {"note": "sk-proj-abcdefghijklmnopqrstuvwxyz123456"},
        {"url": "postgresql://welno:S3cretPassw0rd@db.internal:5432/wello"},
        {"blob": "Xk29fjQ0aLmZpQ8rT5vWnB3yH7cE1dGsKuJo"},
        {"source_api_key_env": "not a name!"},
    ],
)
def test_secret_looking_parameters_are_refused(params):
    with pytest.raises(SecretParameterError) as e:
        credentials.check_parameters(params)
    assert list(params)[0] in str(e.value)


def test_ordinary_parameters_pass():
    credentials.check_parameters(
        {
            "source_api_key_env": "LLAMA_CLOUD_API_KEY",
            "required_env": ["A_B", "OPENAI_API_KEY"],
            "index_id": "1bcef115-bb95-4d14-9c29-d38bb097a39c",
            "base_path": "/data/vector_db/welno",
            "collection_name": "welno_medical_knowledge",
            "manifest_sha": "a" * 64,
            "dry_run": True,
        }
    )


def test_secret_never_prints_and_is_scrubbed(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "canary-value-123456789")
    s = credentials.get_secret("MY_TEST_KEY")
    assert "canary" not in repr(s) and "canary" not in str(s)
    assert s.reveal() == "canary-value-123456789"
    assert credentials.scrub("error near canary-value-123456789!") == "error near ***!"
    with pytest.raises(credentials.ScrubbedError) as e, credentials.scrubbed_errors():
        raise ValueError("failed with canary-value-123456789")
    assert "canary-value" not in str(e.value)


def test_dsn_password_is_scrubbed_alone():
    credentials.remember("postgresql://welno:pw-Canary-9876@localhost/wello")
    assert "pw-Canary-9876" not in credentials.scrub("password authentication failed: pw-Canary-9876")


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(credentials.MissingSecretError, match="NOT_SET_ANYWHERE"):
        credentials.get_secret("NOT_SET_ANYWHERE", purpose="test")


def test_scan_finds_a_planted_leak(tmp_path):
    """The canary scan can fail: a value written anywhere in a run folder is found."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "page.html").write_text("<p>key: canary-leak-000111</p>", encoding="utf-8")
    (tmp_path / "clean.json").write_text("{}", encoding="utf-8")
    hits = credentials.scan_for_values(tmp_path, ["canary-leak-000111"])
    assert [h[0].endswith("page.html") for h in hits] == [True]
