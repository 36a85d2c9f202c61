"""Stock nnU-Net training (Dice + cross-entropy, the paper's eq. 2) on small budgets, for the organ
networks and the single-network baseline in tests, the demo and the benchmarks. Real training uses
nnU-Net's own ``nnUNetTrainer``. Seeded like the localizer (``nnUNet_oar_seed``, default 0), so that
benchmark and demo runs start from the same weights (:class:`nnunet_oar.training.ShortSchedule`)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_oar.training import NarrowWidth, ShortSchedule


class nnUNetTrainerOARTiny(NarrowWidth, ShortSchedule, nnUNetTrainer):
    """A few iterations of a narrow network, for tests of the plumbing."""
    budget = (2, 4, 2)


class nnUNetTrainerOARDemo(NarrowWidth, ShortSchedule, nnUNetTrainer):
    """The demo's budget per network: 160 iterations (8 x 20) of nnU-Net's network at half its width,
    so that the demo finishes in 15 minutes on 2 CPU cores (14 min 19 s; with 200 iterations 15 min 34 s)."""
    budget = (8, 20, 4)
    width_divisor = 2


class nnUNetTrainerOARCPU(ShortSchedule, nnUNetTrainer):
    """The CPU benchmark's budget per network: 400 iterations (10 x 40)."""
    budget = (10, 40, 4)


class nnUNetTrainerOARGPU(ShortSchedule, nnUNetTrainer):
    """The GPU benchmark's budget per network (benchmarks/gpu_openkbp.sh): 1000 iterations (10 x 100)."""
    budget = (10, 100, 10)


def __getattr__(name: str):
    """``<budget trainer>_<E>epochs``: that trainer with E epochs of its iterations, made on first use
    (nnU-Net's ``nnUNetTrainer_Xepochs`` for any X). The benchmark trains its equal-compute baseline this
    way, with E fixed from measured times before the run (``nnunet_oar.evaluation.benchmark``)."""
    base, _, tail = name.rpartition("_")
    cls = globals().get(base)
    if tail.endswith("epochs") and tail[:-len("epochs")].isdigit() and isinstance(cls, type) \
            and issubclass(cls, ShortSchedule) and int(tail[:-len("epochs")]) > 0:
        epochs = int(tail[:-len("epochs")])
        variant = type(name, (cls,), {"budget": (epochs, *cls.budget[1:]), "__module__": __name__,
                                      "__doc__": f"{base} with {epochs} epochs of {cls.budget[1]} iterations."})
        globals()[name] = variant
        return variant
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
