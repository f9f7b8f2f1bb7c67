"""Each pinned library internal in tunelab.compat still exists in the installed versions."""

import torch

from tunelab import compat


def test_transformers_optimizer_and_scheduler_names():
    assert {"adamw_torch", "adamw_torch_fused", "paged_adamw_8bit"} <= set(compat.optimizer_names())
    assert {"cosine", "linear", "constant"} <= set(compat.scheduler_names())


def test_trainer_safe_globals_load_an_rng_state(tmp_path):
    import numpy as np

    f = tmp_path / "rng_state.pth"
    torch.save({"python": None, "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, f)
    with compat.checkpoint_safe_globals():
        state = torch.load(f, weights_only=True)
    assert state["numpy"][0] == "MT19937"
