"""The model catalog: every named model has a card, and the names match what loading builds."""

import subprocess
import sys

import pytest

from streamvlm.errors import ModelNotFoundError
from streamvlm.info import model_list
from streamvlm.models import catalog
from streamvlm.models.bundled import BUNDLED
from streamvlm.models.geometry import RELEASED
from streamvlm.models.tiny import TINY_MODELS


def test_every_model_loading_knows_has_a_card():
    named = {card.name for card in catalog.named_models()}
    assert named == {*BUNDLED, *TINY_MODELS, *RELEASED}
    assert set(catalog.GEOMETRY_MODELS) == set(RELEASED)


def test_cards_say_what_a_model_can_answer():
    synth = catalog.model_card(catalog.TINY_SYNTH)
    assert synth.kind == catalog.BUNDLED and "synthetic world" in synth.can_answer
    for name in (*catalog.TINY_MODELS, *catalog.GEOMETRY_MODELS):
        assert catalog.model_card(name).kind == catalog.RANDOM
        assert "noise" in catalog.model_card(name).can_answer
    own = catalog.model_card("/models/Qwen2.5-VL-7B-Instruct")
    assert own.kind == catalog.CHECKPOINT and own.can_answer is None
    assert own.to_dict()["name"] == "/models/Qwen2.5-VL-7B-Instruct"


def test_catalog_imports_without_torch():
    code = "import sys, streamvlm.models.catalog; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_name_that_can_name_no_model_is_refused_at_once(tmp_path):
    assert catalog.check_model_name(catalog.TINY_SYNTH).kind == catalog.BUNDLED
    assert catalog.check_model_name("Qwen/Qwen2.5-VL-7B-Instruct").kind == catalog.CHECKPOINT  # the loader's
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert catalog.check_model_name(str(tmp_path / "ckpt")).kind == catalog.CHECKPOINT
    for name, says in [
        ("tiny-qwen", "unknown model 'tiny-qwen': no model of that name and no such directory"),
        ("./models/mine", "unknown model './models/mine'"),
        (str(tmp_path), "is not a model directory (no config.json in it)"),
        (str(tmp_path / "ckpt" / "config.json"), "is not a model directory"),
    ]:
        with pytest.raises(ModelNotFoundError) as info:
            catalog.check_model_name(name)
        message = str(info.value)
        assert says in message, message
        assert "\n" not in message and catalog.TINY_SYNTH in message and "org/name" in message


def test_the_line_a_command_prints():
    assert catalog.model_card(catalog.TINY_QWEN).line() == (
        "model tiny-qwen2.5-vl (random): random weights, for testing streamvlm's mechanics: its answers are noise"
    )
    assert catalog.model_card("/models/mine").line() == "model /models/mine"


def test_info_lists_the_named_models_bundled_first(monkeypatch, tmp_path):
    listed = model_list()
    assert [m["name"] for m in listed] == [c.name for c in catalog.named_models()]
    assert listed[0]["name"] == catalog.TINY_SYNTH and listed[0]["kind"] == catalog.BUNDLED
    assert listed[0]["weights"] == "checkpoint present"
    assert {m["weights"] for m in listed if m["name"] in catalog.TINY_MODELS} == {"built in memory"}
    monkeypatch.setitem(BUNDLED, catalog.TINY_SYNTH, tmp_path / catalog.TINY_SYNTH)
    assert model_list()[0]["weights"] == "checkpoint missing"
