import re
from pathlib import Path

import pytest

from ml_backend.config import ConfigError, ProjectSettings, Settings, parse_extra_params


def test_environment_sets_process_and_project_settings(tmp_path):
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": "redis://x:1/0",
                                  "LABEL_STUDIO_URL": "http://ls:8080/", "XIL_ATTRIBUTION": "saliency",
                                  "XIL_STRATEGIES": "rrr,counterexamples", "XIL_IMAGE_SIZE": "32"})
    assert settings.model_dir == tmp_path and settings.redis_url == "redis://x:1/0"
    assert settings.label_studio_url == "http://ls:8080"
    assert settings.project.attribution == "saliency"
    assert settings.project.strategies == ("rrr", "counterexamples")
    assert settings.project.image_size == 32


def test_extra_params_override_per_project():
    base = ProjectSettings()
    changed = base.with_overrides(parse_extra_params('{"rrr_lambda": "3", "strategies": ["counterexamples"], '
                                                     '"set_uncertainty_sampling": "false", "epochs": "1e2"}'))
    assert changed.rrr_lambda == 3.0 and changed.strategies == ("counterexamples",)
    assert changed.set_uncertainty_sampling is False and changed.epochs == 100
    assert base.rrr_lambda == ProjectSettings().rrr_lambda != 3.0  # the defaults are untouched


@pytest.mark.parametrize("params, message", [
    ({"unknown": 1}, r"unknown setting 'unknown'"),
    ({"rr_lambda": 1}, r"unknown setting 'rr_lambda' \(did you mean 'rrr_lambda'"),
    ({"epochs": 3, "EPOCHS": 3}, r"'EPOCHS' \(did you mean 'epochs'"),
])
def test_unknown_extra_params_are_an_error_naming_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        ProjectSettings().with_overrides(params)


@pytest.mark.parametrize("params, message", [
    ({"evidence_mass": 0}, "evidence_mass"),
    ({"image_size": "big"}, "image_size"),
])
def test_bad_values_are_rejected_with_a_message(params, message):
    with pytest.raises(ConfigError, match=message):
        ProjectSettings().with_overrides(params)


@pytest.mark.parametrize("raw, field, message", [
    ('{"learning_rate": NaN}', "learning_rate", "finite number"),
    ('{"rrr_lambda": Infinity}', "rrr_lambda", "finite number"),
    ('{"rrr_lambda": "-inf"}', "rrr_lambda", "finite number"),
    ('{"epochs": Infinity}', "epochs", "integer"),
    ('{"epochs": 1e9}', "epochs", r"\[1, 1000\]"),
    ('{"epochs": true}', "epochs", "integer"),
    ('{"epochs": 2.5}', "epochs", "integer"),
    ('{"epochs": "2.5"}', "epochs", "integer"),
    ('{"batch_size": 0}', "batch_size", r"\[1, 4096\]"),
    ('{"batch_size": -5}', "batch_size", r"\[1, 4096\]"),
    ('{"counterexamples": 1e9}', "counterexamples", r"\[0, 100\]"),
    ('{"mc_samples": 1e9}', "mc_samples", r"\[1, 1000\]"),
    ('{"patience": -1}', "patience", r"\[0, 1000\]"),
    ('{"learning_rate": 0}', "learning_rate", r"\(0, 10\]"),
    ('{"cali_lambda": 0}', "cali_lambda", r"\(0, 1\]"),
    ('{"evidence_sigma": 0}', "evidence_sigma", "> 0"),
    ('{"kl_weight": -0.1}', "kl_weight", ">= 0"),
    ('{"holdout": 1}', "holdout", r"\[0, 1\)"),
    ('{"image_size": 8}', "image_size", r"\[16, 1024\]"),
    ('{"min_annotations": 0}', "min_annotations", r"\[1, 1000000\]"),
    ('{"set_uncertainty_sampling": "maybe"}', "set_uncertainty_sampling", "true or false"),
    ('{"checkpoint": 5}', "checkpoint", "string"),
    ('{"checkpoint": "\\ud800.pt"}', "checkpoint", "UTF-8"),
    ('{"checkpoint": "a\\u0000b"}', "checkpoint", "without NUL"),
    ('{"backbone": "%s"}' % ("x" * 5000), "backbone", "4096 bytes"),
    ('{"backbone": "%s"}' % ("x" * 256), "backbone", "255 per file name"),
])
def test_values_out_of_type_or_range_name_the_field_and_the_range(raw, field, message):
    with pytest.raises(ConfigError, match=rf"^{field} must be .*{message}"):
        ProjectSettings().with_overrides(parse_extra_params(raw))


def test_a_long_bad_value_is_not_echoed_whole():
    with pytest.raises(ConfigError) as info:
        ProjectSettings().with_overrides({"checkpoint": "x" * 5000})
    assert len(str(info.value)) < 300


def test_validate_checks_settings_built_directly():
    with pytest.raises(ConfigError, match="epochs"):
        ProjectSettings(epochs=0).validate()
    with pytest.raises(ConfigError, match="rrr_lambda"):
        ProjectSettings(rrr_lambda=float("nan")).validate()
    with pytest.raises(ConfigError, match="workers"):
        Settings().replace(workers=0)
    assert ProjectSettings(patience=0, counterexamples=0, slic_segments=0).validate().patience == 0


@pytest.mark.parametrize("env, message", [
    ({"TORCH_THREADS": "abc"}, "^TORCH_THREADS must be an integer"),
    ({"TORCH_THREADS": "-1"}, "^TORCH_THREADS must be >= 0"),
    ({"PORT": "70000"}, r"^PORT must be in \[1, 65535\]"),
    ({"WORKERS": "0"}, "^WORKERS must be in"),
    ({"THREADS": "1.5"}, "^THREADS must be an integer"),
    ({"GUNICORN_TIMEOUT": "soon"}, "^GUNICORN_TIMEOUT"),
    ({"MAX_BODY_BYTES": "0"}, "^MAX_BODY_BYTES must be >= 1"),
    ({"FETCH_TIMEOUT": "nan"}, "^FETCH_TIMEOUT must be a finite number"),
    ({"FETCH_TIMEOUT": "0"}, "^FETCH_TIMEOUT must be > 0"),
    ({"TRAIN_DEBOUNCE_SECONDS": "inf"}, "^TRAIN_DEBOUNCE_SECONDS"),
    ({"DEVICE": "gpu"}, "^DEVICE must be auto, cpu, cuda, cuda:N or mps"),
    ({"LOG_LEVEL": "loud"}, "^LOG_LEVEL"),
    ({"HTTP_SERVER": "uwsgi"}, "^HTTP_SERVER must be granian or gunicorn"),
    ({"XIL_EPOCHS": "0"}, r"^XIL_EPOCHS must be in \[1, 1000\]"),
    ({"XIL_LEARNING_RATE": "nan"}, "^XIL_LEARNING_RATE must be a finite number"),
    ({"XIL_CHECKPOINT": "\ud800"}, "^XIL_CHECKPOINT must be a path in UTF-8"),
    ({"XIL_BACKBONE": "a\x00b"}, "^XIL_BACKBONE must be a path in UTF-8 without NUL"),
])
def test_environment_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("params, message", [
    ({"attribution": "lime"}, "attribution must be one of"),
    ({"strategies": "rrr,magic"}, "unknown feedback strategy 'magic'"),
    ({"model_kind": "resnet9000"}, "model_kind must be one of"),
    ({"acquisition": "luck"}, "unknown acquisition function 'luck'"),
])
def test_extension_names_are_checked_against_their_registries(params, message):
    from ml_backend.project import check_names

    settings = ProjectSettings().with_overrides(params)  # types and ranges: fine
    with pytest.raises(ConfigError, match=message):
        check_names(settings)


def test_a_default_naming_no_extension_refuses_to_start(tmp_path):
    from ml_backend.app import create_app

    settings = Settings.from_env({"MODEL_DIR": str(tmp_path), "XIL_ATTRIBUTION": "lime"})
    with pytest.raises(ConfigError, match="attribution"):
        create_app(settings)


def test_environment_sets_server_and_local_files_settings():
    settings = Settings.from_env({"HOST": "127.0.0.1", "PORT": "8081", "WORKERS": "3", "THREADS": "4",
                                  "GUNICORN_TIMEOUT": "60", "DEVICE": "cuda:1", "LOG_LEVEL": "debug",
                                  "LOCAL_FILES_DOCUMENT_ROOT": "/srv/files", "WEBHOOK_SECRET": ""})
    assert (settings.host, settings.port, settings.workers, settings.threads) == ("127.0.0.1", 8081, 3, 4)
    assert settings.gunicorn_timeout == 60 and settings.gunicorn_bind == "127.0.0.1:8081"
    assert settings.http_server == "granian" and Settings.from_env({"HTTP_SERVER": "gunicorn"}).http_server == "gunicorn"
    assert settings.device == "cuda:1" and settings.local_files_root == "/srv/files"
    assert Settings.from_env({"ML_BACKEND_BIND": "unix:/tmp/s", "PORT": "1"}).gunicorn_bind == "unix:/tmp/s"
    # the Label Studio form wins; an empty variable (compose's ${VAR:-}) counts as unset
    assert Settings.from_env({"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/a", "LOCAL_FILES_DOCUMENT_ROOT": "/b"}
                             ).local_files_root == "/a"
    assert Settings.from_env({"PORT": "", "LABEL_STUDIO_API_KEY": "", "LABEL_STUDIO_ACCESS_TOKEN": "t"}
                             ).label_studio_api_key == "t"
    assert Settings.from_env({"XIL_STRATEGIES": ""}).project.strategies == ()  # no feedback is a choice


def test_only_config_reads_the_environment():
    package = Path(__file__).resolve().parents[1] / "ml_backend"
    reads = re.compile(r"\benviron\b|\bgetenv")
    found = [f"{path.relative_to(package.parent)}:{n}: {line.strip()}"
             for path in sorted(package.rglob("*.py")) if path.name != "config.py" or path.parent != package
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if reads.search(line.split("#", 1)[0])]
    assert not found, "read settings through ml_backend.config.Settings.from_env():\n" + "\n".join(found)


def test_extra_params_must_be_a_json_object():
    assert parse_extra_params(None) == {}
    with pytest.raises(ConfigError):
        parse_extra_params("[1, 2]")
    with pytest.raises(ConfigError):
        parse_extra_params("{nope")


def test_database_url_names_postgresql_or_nothing():
    url = "postgresql://xil:hunter2@db.example:5432/xil"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url
    assert Settings.from_env({"DATABASE_URL": "postgres://db/xil"}).database_url == "postgres://db/xil"
    assert Settings.from_env({"DATABASE_URL": ""}).database_url == ""  # unset: the SQLite file under MODEL_DIR
    assert "hunter2" not in repr(Settings.from_env({"DATABASE_URL": url}))


@pytest.mark.parametrize("value, message", [
    ("mysql://xil:hunter2@db/xil", "must be a postgresql:// URL, not mysql://"),
    ("sqlite:///models/feedback.sqlite3", "must be a postgresql:// URL, not sqlite://"),
    ("xil:hunter2@db/xil", r"must be a postgresql:// URL \(postgresql://user:password@host:5432/database\)"),
    ("postgresql://xil:hunter2@db:port/xil", "has a port that is not a number"),
])
def test_a_bad_database_url_is_an_error_naming_the_variable_not_the_password(value, message):
    with pytest.raises(ConfigError, match="^DATABASE_URL " + message) as caught:
        Settings.from_env({"DATABASE_URL": value})
    assert "hunter2" not in str(caught.value)


def test_the_backend_refuses_to_start_with_an_unsupported_database_url(monkeypatch, capsys):
    from ml_backend.cli import main

    monkeypatch.setenv("DATABASE_URL", "mysql://xil:hunter2@db/xil")
    assert main(["versions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: DATABASE_URL must be a postgresql:// URL") and "hunter2" not in err


@pytest.mark.parametrize("value, expected", [("false", False), ("0", False), ("off", False), ("true", True),
                                             ("YES", True)])
def test_evidence_clusters_is_a_per_project_switch_from_the_environment(value, expected):
    assert ProjectSettings().evidence_clusters is True  # on unless a project says otherwise
    settings = Settings.from_env({"XIL_EVIDENCE_CLUSTERS": value})
    assert settings.project.evidence_clusters is expected
    # a project's extra params override the environment's, either way
    assert settings.project.with_overrides({"evidence_clusters": not expected}).evidence_clusters is (not expected)
    assert settings.project.with_overrides({"evidence_clusters": "off"}).evidence_clusters is False


def test_a_bad_evidence_clusters_value_names_the_variable():
    with pytest.raises(ConfigError, match="^XIL_EVIDENCE_CLUSTERS must be true or false, not 'maybe'"):
        Settings.from_env({"XIL_EVIDENCE_CLUSTERS": "maybe"})
    with pytest.raises(ConfigError, match="^evidence_clusters must be true or false"):
        ProjectSettings().with_overrides({"evidence_clusters": 2})
