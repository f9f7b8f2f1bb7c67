"""Each pinned library internal in tunelab.compat still exists in the installed versions."""

import torch

from tunelab import compat


def test_optimizer_and_scheduler_names_mirror_the_installed_transformers():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert compat.optimizer_names() == [o.value for o in OptimizerNames]
    assert compat.scheduler_names() == [s.value for s in SchedulerType]


def test_trainer_safe_globals_load_an_rng_state(tmp_path):
    import numpy as np

    f = tmp_path / "rng_state.pth"
    torch.save({"python": None, "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, f)
    with compat.checkpoint_safe_globals():
        state = torch.load(f, weights_only=True)
    assert state["numpy"][0] == "MT19937"


def test_torchrun_parses_the_launch_tunelab_builds():
    from torch.distributed.run import parse_args, run  # noqa: F401 - what compat.torchrun calls

    args = parse_args(
        [
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--node-rank",
            "0",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            "29500",
            "--max-restarts",
            "0",
            "--shutdown-timeout",
            "900",
            "--module",
            "tunelab",
            "train",
            "cfg.yaml",
            "--resume",
        ]
    )
    assert (args.nproc_per_node, args.module, args.training_script, args.training_script_args) == (
        "2",
        True,
        "tunelab",
        ["train", "cfg.yaml", "--resume"],
    )
    assert args.shutdown_timeout == 900 and args.max_restarts == 0


def test_generation_logits_processors_match_generate(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config.schema import GenerationSettings
    from tunelab.inference.generate import generate_kwargs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    greedy = compat.generation_logits_processors(model, generate_kwargs(model, tok, GenerationSettings()), 5, "cpu")
    sampled = compat.generation_logits_processors(
        model, generate_kwargs(model, tok, GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9)), 5, "cpu"
    )
    assert len(greedy) == 0 and {type(p).__name__ for p in sampled} >= {"TemperatureLogitsWarper", "TopPLogitsWarper"}


def test_the_trainer_still_has_the_checkpoint_method_tunelab_overrides():
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(getattr(Trainer, compat.SAVE_CHECKPOINT)).parameters) == ["self", "model", "trial"]


def test_trackio_storage_and_hub_offline_switch(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    restore = compat.point_trackio_at(tmp_path / "trackio")
    assert compat.trackio_storage().get_project_db_path("p").parent == (tmp_path / "trackio").resolve()
    restore()
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    compat.set_hub_offline()
    assert hub.is_offline_mode()


def test_optuna_running_trial_continues_a_trial_a_dead_worker_left_running():
    import optuna

    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    t = study.ask()
    t.suggest_int("r", 1, 8)
    t.report(1.0, 2)
    frozen = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))[0]
    again = compat.optuna_running_trial(study, frozen)
    assert again.number == t.number and again.suggest_int("r", 1, 8) == t.params["r"]  # the stored value
    again.report(0.5, 4)
    assert again.should_prune() is False
    study.tell(again, 0.5)
    done = study.trials[0]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.intermediate_values == {2: 1.0, 4: 0.5}


def test_compile_figures_count_a_compiled_graph_and_its_backward():
    graphs, seconds = compat.compile_figures()
    x = torch.randn(4, requires_grad=True)
    torch.compile(lambda t: (t.sin() + 1).cos().sum(), backend="aot_eager")(x).backward()
    graphs_after, seconds_after = compat.compile_figures()
    assert graphs_after == graphs + 1
    assert seconds_after > seconds
