import pytest

from ml_backend.labelstudio.schema import SchemaError, parse_label_config


def test_image_config_with_evidence(image_config):
    schema = parse_label_config(image_config)
    assert schema.object_type == "image"
    assert (schema.object_name, schema.data_key, schema.choices_name) == ("image", "image", "label")
    assert schema.classes == ("Class A", "Class B")
    assert schema.evidence_name == "evidence" and schema.evidence_type == "brushlabels"
    assert (schema.evidence_label, schema.irrelevant_label, schema.relevant_label) == \
        ("Model evidence", "Irrelevant", "Relevant")
    assert schema.has_evidence


def test_text_config_with_evidence(text_config):
    schema = parse_label_config(text_config)
    assert schema.object_type == "text" and schema.data_key == "text"
    assert schema.evidence_type == "labels"
    assert schema.classes == ("Positive", "Negative")


def test_choices_only_config_has_no_evidence():
    schema = parse_label_config(
        '<View><Text name="t" value="$review"/><Choices name="c" toName="t">'
        '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>')
    assert not schema.has_evidence and schema.evidence_name is None
    assert schema.data_key == "review" and schema.n_classes == 3


def test_label_names_are_taken_from_the_config():
    schema = parse_label_config(
        '<View><Image name="img" value="$url"/><Choices name="c" toName="img"><Choice value="x"/><Choice value="y"/>'
        '</Choices><BrushLabels name="why" toName="img"><Label value="Evidence"/><Label value="Confounder"/>'
        '<Label value="Look here"/></BrushLabels></View>')
    assert (schema.evidence_label, schema.irrelevant_label, schema.relevant_label) == ("Evidence", "Confounder", "Look here")


@pytest.mark.parametrize("config, missing", [
    ("", "no label config"),
    ("<View><Image", "not valid XML"),
    ('<View><Audio name="a" value="$a"/></View>', "<Image> or <Text>"),
    ('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"><Label value="x"/></RectangleLabels></View>',
     "<Choices>"),
    ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="only"/></Choices></View>',
     "at least two"),
    ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/><Choice value="b"/></Choices>'
     '<BrushLabels name="b" toName="i"><Label value="Car"/></BrushLabels></View>', "Model evidence"),
])
def test_unservable_configs_say_what_is_missing(config, missing):
    with pytest.raises(SchemaError, match=missing):
        parse_label_config(config)


def test_the_parse_cache_is_bounded_in_size(image_config):
    from ml_backend.labelstudio import schema as module

    base = image_config
    module._parse_cached.cache_clear()
    for i in range(100):  # distinct configs: comments make them differ
        parse_label_config(base + f"<!-- {i} -->")
    assert module._parse_cached.cache_info().currsize <= 64
    huge = base + "<!--" + "x" * (module.CACHED_CONFIG_CHARS + 1) + "-->"
    before = module._parse_cached.cache_info()
    assert parse_label_config(huge).classes == parse_label_config(base).classes
    assert module._parse_cached.cache_info().currsize <= before.currsize + 1  # only `base` may be added
