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
                                                     '"set_uncertainty_sampling": "false", "unknown": 1}'))
    assert changed.rrr_lambda == 3.0 and changed.strategies == ("counterexamples",)
    assert changed.set_uncertainty_sampling is False
    assert base.rrr_lambda == ProjectSettings().rrr_lambda != 3.0  # the defaults are untouched


@pytest.mark.parametrize("params, message", [
    ({"attribution": "lime"}, "attribution"),
    ({"strategies": "rrr,magic"}, "magic"),
    ({"evidence_mass": 0}, "evidence_mass"),
    ({"image_size": "big"}, "image_size"),
])
def test_bad_values_are_rejected_with_a_message(params, message):
    with pytest.raises(ConfigError, match=message):
        ProjectSettings().with_overrides(params)


def test_extra_params_must_be_a_json_object():
    assert parse_extra_params(None) == {}
    with pytest.raises(ConfigError):
        parse_extra_params("[1, 2]")
    with pytest.raises(ConfigError):
        parse_extra_params("{nope")
