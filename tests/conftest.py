import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from cdscale.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer, from the packaged weights (converted once, then cached)."""
    from transformers import AutoTokenizer

    from cdscale.models.smollm2 import prepare_smollm2

    return AutoTokenizer.from_pretrained(prepare_smollm2())
