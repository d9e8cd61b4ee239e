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


@pytest.fixture(scope="session")
def teacher_model(tmp_path_factory):
    """A tiny Llama bootstrapped for 250 steps on 1-2 digit scratchpad addition: enough for
    teacher outputs with extractable answers (about a minute on 2 CPUs)."""
    import torch

    from cdscale.bootstrap import BootstrapSettings, bootstrap
    from cdscale.tasks import build_task

    out = tmp_path_factory.mktemp("models") / "tiny-teacher"
    torch.set_num_threads(2)
    task = build_task("addition", {"min_digits": 1, "max_digits": 2})
    bootstrap(task, out, BootstrapSettings(steps=250, batch_size=32, lr=3e-3))
    return out
