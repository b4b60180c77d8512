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


# --- the detection rules, boundary by boundary (each case fails if its rule is removed or loosened) ---


@pytest.mark.parametrize(
    "value,secret",
    [
        ("sk-abcdefghijklmnop", True),  # OpenAI
        ("llx-abcdefghijklmnop", True),  # LlamaCloud
        ("AIzaabcdefghijklmnopqrst", True),  # Google
        ("ghp_abcdefghij", True),  # GitHub
        ("xoxb-abcdefghij", True),  # Slack
        ("mysql://user:pw12@host/db", True),  # a URL with a password
        ("host=db password=abcd", True),  # libpq key=value
        ("host=db PASSWORD=abcd", True),
        ("mysql://host/db", False),  # no password
        ("1bcef115-bb95-4d14-9c29-d38bb097a39c", False),  # an id, not a secret
        ("0123456789abcdef0123456789abcdef", False),  # a checksum
        ("0123456789ABCDEF0123456789ABCDEF", False),  # upper-case hex too
        ("Xk29fjQ0aLmZpQ8rT5vWnB3yH7cE1dGs", True),  # 32 characters, opaque and mixed
        ("Xk29fjQ0aLmZpQ8rT5vWnB3yH7cE1dG", False),  # 31
        ("Xk29fjQ0aLmZpQ8rT5vW/nB3yH7cE1dGsKuJo", False),  # a path
        ("Xk29fjQ0aLmZpQ8rT5vW nB3yH7cE1dGsKuJo", False),  # words
        ("Xk29fjQ0aLmZpQ8rT5vW+nB3yH7cE1dGsKuJo", False),  # a character a token of this kind lacks
        ("xkafjqsalmzpqsrtlvwnbsyhscesdgsk", False),  # no digit
        ("12345678901234567890123456789012", False),  # no letter
        ("xk29fjq0almzpq8rt5vwnb3yh7ce1dgs", False),  # no upper case
        ("XK29FJQ0ALMZPQ8RT5VWNB3YH7CE1DGS", False),  # no lower case
        ("sk-abcdefgh", False),  # 11 characters: too short to be a key
        ("sk-abcdefghi", False),  # 12, but the OpenAI pattern needs 16 after the prefix
        (12345678901234, False),
        (None, False),
    ],
)
def test_looks_like_secret_value(value, secret):
    assert credentials.looks_like_secret_value(value) is secret


def test_a_short_value_is_never_a_secret_but_twelve_characters_may_be():
    assert credentials.looks_like_secret_value("user:p@h/xyz") is False  # 12 characters, no rule matches
    assert credentials.looks_like_secret_value("a://u:pwd1@h") is True  # 12: a URL with a password
    assert credentials.looks_like_secret_value("a://u:pwd@h") is False  # 11


def test_check_parameters_reads_every_parameter_and_names_the_fix():
    with pytest.raises(SecretParameterError) as e:
        credentials.check_parameters(
            {
                "source_api_key_env": "LLAMA_CLOUD_API_KEY",  # fine: checking goes on after it
                "required_env": ["OPENAI2_KEY", "bad name"],
                "api_token": "value",
                "note": "sk-proj-abcdefghijklmnopqrstuvwxyz",
            }
        )
    msg = str(e.value)
    assert msg.startswith(
        "refusing secret-looking parameters (papermill would record them in the executed notebook):\n  - "
    )
    assert msg.count("\n  - ") == 3 and "\n  - api_token: looks like" in msg and "\n  - note: its" in msg
    assert (
        "required_env: must name an environment variable (like LLAMA_CLOUD_API_KEY), not hold a value" in msg
    )
    assert (
        "api_token: looks like a secret by its name; rename it to api_token_env and give the name of the "
        "environment variable that holds the value" in msg
    )
    assert (
        "note: its value looks like a secret (key, token or DSN with a password); put the value in an "
        "environment variable and pass that variable's name in a *_env parameter" in msg
    )


@pytest.mark.parametrize("value", [None, "", False])
def test_a_secret_named_parameter_left_empty_is_fine(value):
    credentials.check_parameters({"api_key": value, "x_env": "OPENAI2_KEY", "y_env": ["A1", ""]})


def test_a_secret_named_parameter_set_to_true_is_refused():
    with pytest.raises(SecretParameterError, match="api_key"):
        credentials.check_parameters({"api_key": True})


def test_get_secret_names_the_variable_and_the_purpose(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(credentials.MissingSecretError) as e:
        credentials.get_secret("NOT_SET_ANYWHERE", purpose="the source")
    assert str(e.value).startswith("environment variable NOT_SET_ANYWHERE is not set (the source): export it")
    with pytest.raises(credentials.MissingSecretError) as e:
        credentials.get_secret("NOT_SET_ANYWHERE")
    assert str(e.value).startswith("environment variable NOT_SET_ANYWHERE is not set: export it")
    assert credentials.get_secret("NOT_SET_ANYWHERE", required=False) is None
    with pytest.raises(credentials.MissingSecretError) as e:
        credentials.get_secret("", purpose="the OpenAI key")
    assert str(e.value) == "no environment variable named for the OpenAI key"
    with pytest.raises(credentials.MissingSecretError) as e:
        credentials.get_secret("")
    assert str(e.value) == "no environment variable named for this secret"
    assert credentials.get_secret("", required=False) is None
    with pytest.raises(SecretParameterError) as e:
        credentials.get_secret("sk-notaname")
    assert str(e.value) == "'sk-notaname' is not an environment variable name"


def test_a_secret_keeps_its_name_and_is_true_when_set(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "value-0123456789")
    s = credentials.get_secret("SOME_API_KEY")
    assert s.env_name == "SOME_API_KEY" and repr(s) == "Secret(SOME_API_KEY=***)" and bool(s) is True
    assert bool(credentials.Secret("EMPTY", "")) is False
    assert "value-0123456789" in credentials.secret_env_values()


def test_remember_keeps_values_and_dsn_passwords_from_four_characters():
    credentials.remember("abc")  # too short: scrubbing it would mangle ordinary text
    credentials.remember("")
    credentials.remember(None)
    credentials.remember("wxyz")
    credentials.remember("postgresql://u:p4ss@h/db")
    credentials.remember("postgres://u:abc@h/db")  # a 3-character password alone is not remembered
    credentials.remember("host=h user=u password='k3y9' dbname=d")
    credentials.remember("host=h user=u PASSWORD=zq1w dbname=d")
    text = credentials.scrub("abc wxyz p4ss k3y9 zq1w")
    assert text == "abc *** *** *** ***"
    assert "abc" in credentials.scrub("abc@h")


def test_scrub_replaces_the_longest_value_first():
    """A value inside a longer one: masked first, it would leave the rest of the longer one in the text
    (lengths differ from the alphabetical order here, so sorting by anything else fails)."""
    assert credentials.scrub("key=abcd1234efgh", ["abcd", "abcd1234efgh"]) == "key=***"
    values = ["zz12", "ab zz12 cd"]
    assert credentials.scrub("x ab zz12 cd y", values) == "x *** y"
    assert credentials.scrub_data({"k": "x ab zz12 cd y"}, values) == {"k": "x *** y"}
    assert credentials.scrub("x", [""]) == "x"


def test_scrubbed_errors_rewraps_only_when_a_secret_was_in_the_message():
    credentials.remember("leaky-secret-0042")
    with pytest.raises(credentials.ScrubbedError) as e, credentials.scrubbed_errors():
        raise KeyError("leaky-secret-0042")
    assert str(e.value) == "KeyError: '***'" and e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(ValueError, match="plain"), credentials.scrubbed_errors():
        raise ValueError("plain")


def test_scan_names_the_file_and_only_the_start_of_the_value(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\xff\xfe\x00 Canary-\xea\xb0\x80-1234")
    (tmp_path / "sub").mkdir()
    hits = credentials.scan_for_values(tmp_path, ["Canary-가-1234", "", "absent-value"])
    assert hits == [(str(tmp_path / "a.bin"), "Can…")]
