"""The model catalog: every named model has a card, and the names match what loading builds."""

import subprocess
import sys

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
